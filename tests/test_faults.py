"""One test per fault a user can run into: each gets one clear line and nothing stale is used.

Synthetic and fast (no ../shared); each test was checked to fail with its guard removed.
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from prepared import write_prepared

from pipeline import cli
from pipeline.errors import DataError
from pipeline.io import atomic_path
from pipeline.models import build_model
from pipeline.params import load_params, validate
from pipeline.provenance import check_prepared, check_provenance, fingerprint, prepared_fingerprint
from pipeline.training.checkpoint import (
    FORMAT_VERSION,
    capture_rng,
    clear_state,
    load_checkpoint,
    load_model,
    load_state,
    restore_rng,
    resume_path,
    save_checkpoint,
    save_state,
)

K, P, C = 16, 11, 3


def _classifier_ckpt(path, data_fingerprint="d" * 64, **overrides):
    torch.manual_seed(0)
    model = build_model("hybridsn", K, P, C, dropout=0.4)
    fields = dict(
        state_dict=model.state_dict(),
        model_config=model.config,
        pca={
            "mean": np.zeros(K),
            "components": np.eye(K),
            "explained_variance": np.ones(K),
            "explained_variance_ratio": np.full(K, 1 / K),
            "whiten": np.array(False),
            "scale": np.array(1.0),
        },
        patch={"size": P, "padding": "zero"},
        class_names=["a", "b", "c"],
        meta={"dataset": "toy"},
        data_fingerprint=data_fingerprint,
        params={"train": {"lr": 1e-3, "epochs": 2}, "seed": 0},
    )
    fields.update(overrides)
    save_checkpoint(path, **fields)
    return model


# --------------------------------------------------------------------------- checkpoints


def test_random_bytes_checkpoint_is_one_line_without_unsafe_advice(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError) as e:
        load_checkpoint(bad)
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg
    assert "weights_only" not in msg and "trusted source" not in msg


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    _classifier_ckpt(good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.pt: not a readable classifier checkpoint"):
        load_checkpoint(cut)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would run",))


def test_code_carrying_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": _RunsCode()}, bad)
    with pytest.raises(DataError, match="refused") as e:
        load_checkpoint(bad)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_with_wrong_structure_names_file_and_missing_fields(tmp_path):
    bad = tmp_path / "partial.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "class_names": ["a"]}, bad)
    with pytest.raises(
        DataError,
        match=r"partial\.pt: not a classifier checkpoint: missing "
        r"model_config, pca, patch, meta",
    ):
        load_checkpoint(bad)
    torch.save([1, 2, 3], bad)
    with pytest.raises(DataError, match=r"partial\.pt: not a classifier checkpoint \(holds a list"):
        load_checkpoint(bad)


def test_checkpoint_whose_weights_do_not_fit_names_them(tmp_path):
    path = tmp_path / "m.pt"
    model = _classifier_ckpt(path)
    sd = model.state_dict()
    first = next(iter(sd))
    sd["extra.weight"] = sd.pop(first)
    _classifier_ckpt(path, state_dict=sd)
    ckpt = load_checkpoint(path)
    with pytest.raises(DataError) as e:
        load_model(ckpt)
    msg = str(e.value)
    assert str(path) in msg and f"missing weights {first}" in msg and "extra.weight" in msg


def test_checkpoint_with_wrong_shapes_or_config_is_one_line(tmp_path):
    path = tmp_path / "m.pt"
    model = _classifier_ckpt(path)
    sd = model.state_dict()
    first = next(k for k, v in sd.items() if v.ndim > 1)
    sd[first] = torch.zeros(2, 2)
    _classifier_ckpt(path, state_dict=sd)
    with pytest.raises(
        DataError, match=rf"m\.pt: 'state_dict' does not fit the model: size mismatch for {first}"
    ) as e:
        load_model(load_checkpoint(path))
    assert "\n" not in str(e.value)
    _classifier_ckpt(path, model_config={**model.config, "name": "nonesuch"})
    with pytest.raises(DataError, match=r"m\.pt: 'model_config' does not describe a model"):
        load_model(load_checkpoint(path))


def test_checkpoint_with_altered_pca_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    _classifier_ckpt(path)
    raw = torch.load(path, weights_only=True)
    raw["pca"]["mean"] += 1.0
    torch.save(raw, path)
    with pytest.raises(DataError, match=r"m\.pt: its model config or preprocessing arrays differ"):
        load_checkpoint(path)


def test_zero_dimensional_arrays_keep_their_shape(tmp_path):
    path = tmp_path / "m.pt"
    _classifier_ckpt(path)
    pca = load_checkpoint(path)["pca"]
    assert pca["whiten"].shape == () and bool(pca["whiten"]) is False


def test_checkpoint_records_provenance_and_loads_weights_only(tmp_path):
    path = tmp_path / "m.pt"
    model = _classifier_ckpt(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["kind"] == "classifier"
    prov = load_checkpoint(path)["provenance"]
    assert prov["data_fingerprint"] == "d" * 64
    assert prov["params_fingerprint"] == fingerprint(
        {"train": {"lr": 1e-3, "epochs": 2}, "seed": 0}
    )
    again = load_model(load_checkpoint(path))
    x = torch.randn(2, 1, K, P, P)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again(x))


def test_dncnn_checkpoint_is_not_taken_for_a_classifier(tmp_path):
    from pipeline.models.dncnn import DnCNN

    model = DnCNN(depth=17, channels=64)
    path = tmp_path / "dn.pt"
    save_checkpoint(
        path,
        kind="dncnn",
        state_dict=model.state_dict(),
        model_config=model.config,
        band_min=np.zeros(4),
        band_max=np.ones(4),
        noise={"sigma": 30.0},
        split={"height": 10},
        meta={},
    )
    with pytest.raises(DataError, match=r"dn\.pt: a dncnn checkpoint, not a classifier"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, kind="dncnn")
    assert isinstance(ckpt["band_min"], np.ndarray)
    assert isinstance(load_model(ckpt), DnCNN)


# --------------------------------------------------------------------------- resume states


def test_resume_state_round_trip_restores_every_rng(tmp_path):
    gen, npgen = torch.Generator().manual_seed(3), np.random.default_rng(5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)  # noqa: NPY002
    path = resume_path(tmp_path / "models" / "m.pt")
    save_state(
        path,
        {"epoch": 4, "rng": capture_rng({"g": gen, "n": npgen}), "hist": [{"loss": 0.5}]},
        fingerprint="fp",
    )

    def draw():
        return (
            torch.rand(3).tolist(),
            np.random.rand(2).tolist(),  # noqa: NPY002
            random.random(),
            torch.rand(2, generator=gen).tolist(),
            npgen.random(),
        )

    first = draw()
    state = load_state(path, fingerprint="fp")
    assert state["epoch"] == 4 and state["hist"] == [{"loss": 0.5}]
    restore_rng(state["rng"], {"g": gen, "n": npgen})
    assert draw() == first
    clear_state(path)
    assert load_state(path, fingerprint="fp") is None


def test_resume_state_of_other_params_or_corrupt_starts_fresh(tmp_path, caplog):
    path = tmp_path / "s.pt"
    save_state(path, {"epoch": 1}, fingerprint="old")
    with caplog.at_level(logging.WARNING):
        assert load_state(path, fingerprint="new") is None
    assert "starting fresh" in caplog.text and "other data or params" in caplog.text
    path.write_bytes(b"garbage")
    assert load_state(path, fingerprint="old") is None


def test_resume_state_write_interrupted_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "s.pt"
    save_state(path, {"epoch": 1}, fingerprint="fp")

    def dies_half_way(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {"epoch": 2}, fingerprint="fp")
    monkeypatch.undo()
    assert load_state(path, fingerprint="fp")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]
    (tmp_path / ".s.pt.k9left.tmp.pt").write_bytes(b"")  # what kill -9 mid-write leaves
    save_state(path, {"epoch": 2}, fingerprint="fp")
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]


def test_resume_state_refuses_values_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\.obj: a object cannot be stored"):
        save_state(tmp_path / "s.pt", {"obj": object()}, fingerprint="fp")


# --------------------------------------------------------------------------- provenance


def test_fingerprint_ignores_key_order_and_sees_array_content():
    a = np.arange(6, dtype=np.float32)
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({}, a) != fingerprint({}, a + 1)
    assert fingerprint({}, a) != fingerprint({}, a.astype(np.float64))
    assert fingerprint({}, a) != fingerprint({}, a.reshape(2, 3))


def test_provenance_mismatch_names_both_fingerprints_and_the_fix():
    with pytest.raises(DataError) as e:
        check_provenance("m.pt", "a" * 64, "b" * 64, against="data/prepared/x", fix="hsi train")
    msg = str(e.value)
    assert "a" * 12 in msg and "b" * 12 in msg and "`hsi train`" in msg and "m.pt" in msg
    check_provenance("m.pt", "a" * 64, "a" * 64, against="x", fix="y")


def _scene(seed=0, h=12, w=12):
    rng = np.random.default_rng(seed)
    cube = rng.normal(size=(h, w, K)).astype(np.float32)
    labels = rng.integers(0, C + 1, size=(h, w)).astype(np.int64)
    labels[0, :C] = np.arange(1, C + 1)
    test = labels > 0
    split = {"train": test & False, "val": test & False, "test": test, "guard": test & False}
    pca = {"mean": np.zeros(K), "components": np.eye(K), "whiten": np.array(False)}
    return cube, labels, split, pca


def test_prepared_files_of_two_prepare_runs_are_refused(tmp_path):
    cube, labels, split, pca = _scene()
    fp = prepared_fingerprint(cube, labels, split, pca)
    meta = {"fingerprint": fp}
    assert check_prepared("p", meta, cube, labels, split, pca) == fp
    other = dict(split, test=~split["test"])
    with pytest.raises(DataError, match="files of different or interrupted `hsi prepare` runs"):
        check_prepared("p", meta, cube, labels, other, pca)


def _params(tmp_path, **train):
    p = validate(
        {
            "dataset": {"name": "indian_pines"},
            "compute": {"device": "cpu"},
            "train": {**train},
            "patch": {"size": P},
            "tracking": {"enabled": False},
        }
    )
    path = tmp_path / "params.yaml"
    import yaml

    path.write_text(yaml.safe_dump(p.to_dict()))
    return p, path


def test_evaluate_refuses_a_checkpoint_trained_on_other_prepared_data(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    _, params_path = _params(tmp_path)
    cube, labels, split, pca = _scene()
    d = write_prepared(tmp_path, "indian_pines", cube, labels, split, pca)
    ckpt = tmp_path / "models" / "indian_pines" / "hybridsn-seed0.pt"
    stale = "e" * 64  # the checkpoint was trained before a re-`prepare`
    _classifier_ckpt(ckpt, data_fingerprint=stale)
    code = cli.main(
        ["--params", str(params_path), "evaluate", "--model", "hybridsn", "--seed", "0"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    line = err[-1]
    assert line.startswith("hsi evaluate: error:") and stale[:12] in line
    assert json.loads((d / "meta.json").read_text())["fingerprint"][:12] in line
    assert "hsi train --model hybridsn --seed 0" in line
    assert not (tmp_path / "reports").exists()  # nothing written, no stale metrics


def test_evaluate_accepts_its_own_prepared_data(tmp_path, monkeypatch):
    from pipeline.stages import evaluate

    monkeypatch.chdir(tmp_path)
    params, _ = _params(tmp_path)
    cube, labels, split, pca = _scene()
    write_prepared(tmp_path, "indian_pines", cube, labels, split, pca)
    fp = prepared_fingerprint(cube, labels, split, pca)
    _classifier_ckpt(
        tmp_path / "models" / "indian_pines" / "hybridsn-seed0.pt", data_fingerprint=fp
    )
    metrics = evaluate.run(params, "hybridsn", 0)
    assert 0 <= metrics["oa"] <= 1
    out = tmp_path / "reports" / "indian_pines" / "hybridsn-seed0"
    assert (
        json.loads((out / "classification_report.json").read_text())["provenance"][
            "data_fingerprint"
        ]
        == fp
    )


# --------------------------------------------------------------------------- params


def test_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    p = load_params(path)
    assert p["train"]["lr"] == 0.001 and isinstance(p["train"]["lr"], float)
    assert p["train"]["weight_decay"] == 0.0005
    path.write_text("train:\n  epochs: 1e3\n")
    with pytest.raises(Exception, match="'train.epochs' = '1e3' must be an integer"):
        load_params(path)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_report_refuses_an_evaluation_made_on_other_prepared_data(tmp_path, monkeypatch):
    from pipeline.stages import report

    monkeypatch.chdir(tmp_path)
    params, _ = _params(tmp_path)
    cube, labels, split, pca = _scene()
    write_prepared(tmp_path, "indian_pines", cube, labels, split, pca)
    model, seed = params["train"]["models"][0], params["train"]["seeds"][0]
    run = tmp_path / "reports" / "indian_pines" / f"{model}-seed{seed}"
    run.mkdir(parents=True)
    old = {"provenance": {"data_fingerprint": "f" * 64}}
    (run / "classification_report.json").write_text(json.dumps(old))
    with pytest.raises(
        DataError, match=rf"fffffffffff.*hsi evaluate --model {model} --seed {seed}"
    ):
        report.run(params)


def test_prepared_folder_with_a_replaced_array_is_refused(tmp_path, monkeypatch):
    from pipeline.stages.common import load_prepared

    monkeypatch.chdir(tmp_path)
    params, _ = _params(tmp_path)
    cube, labels, split, pca = _scene()
    d = write_prepared(tmp_path, "indian_pines", cube, labels, split, pca)
    assert load_prepared(params).meta["fingerprint"]
    np.save(d / "cube.npy", cube + 1)  # e.g. an interrupted re-`prepare`
    with pytest.raises(DataError, match="run `hsi prepare`"):
        load_prepared(params)


# --------------------------------------------------------------------------- fetch, custom data


def _custom(tmp_path, cube, gt, folder="mine", **extra):
    src = tmp_path / folder
    src.mkdir(exist_ok=True)
    np.save(src / "cube.npy", cube)
    np.save(src / "gt.npy", gt)
    return {"cube": str(src / "cube.npy"), "gt": str(src / "gt.npy"), **extra}


def _cube_gt(h=6, w=5, bands=8):
    cube = np.random.default_rng(0).random((h, w, bands)).astype(np.float32)
    gt = np.zeros((h, w), np.uint8)
    gt[0, :] = 1
    gt[2, :] = 10
    gt[4, :] = 14
    return cube, gt


def test_label_map_with_gaps_is_renumbered_with_names_and_values(tmp_path):
    from pipeline.data.fetching import fetch_dataset, load_raw

    cube, gt = _cube_gt()
    out = tmp_path / "raw" / "custom"
    custom = _custom(tmp_path, cube, gt, class_names=["soil", "corn", "lettuce"])
    manifest = fetch_dataset("custom", out, custom=custom)
    assert manifest["class_names"] == ["soil (1)", "corn (10)", "lettuce (14)"]
    assert manifest["gt"]["label_values"] == [1, 10, 14]
    _, labels, _ = load_raw(out)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]
    assert (labels[2] == 2).all() and (labels[4] == 3).all()
    # names for every label 1..max are accepted too; those of absent labels are dropped
    names = [f"n{i}" for i in range(1, 15)]
    manifest = fetch_dataset("custom", out, custom=dict(custom, class_names=names))
    assert manifest["class_names"] == ["n1 (1)", "n10 (10)", "n14 (14)"]


def test_no_data_label_value_is_an_error_unless_ignored(tmp_path):
    from pipeline.data.fetching import fetch_dataset, load_raw

    cube, gt = _cube_gt()
    gt[5, :2] = 255
    out = tmp_path / "raw" / "custom"
    custom = _custom(tmp_path, cube, gt)
    with pytest.raises(
        DataError,
        match=r"label value 255 \(2 pixels\) looks like a no-data.*"
        r"ignore_labels",
    ):
        fetch_dataset("custom", out, custom=custom)
    assert not out.exists()
    manifest = fetch_dataset("custom", out, custom=dict(custom, ignore_labels=[255]))
    assert len(manifest["class_names"]) == 3
    _, labels, _ = load_raw(out)
    assert (labels[5, :2] == 0).all()


def test_failed_fetch_leaves_the_previous_valid_folder_untouched(tmp_path):
    from pipeline.data.fetching import fetch_dataset, load_raw

    cube, gt = _cube_gt()
    out = tmp_path / "raw" / "custom"
    fetch_dataset("custom", out, custom=_custom(tmp_path, cube, gt))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    nan_cube = cube.copy()
    nan_cube[1, 2, 3] = np.nan
    bad_gt = np.zeros((3, 3), np.uint8)
    for bad in (
        _custom(tmp_path, nan_cube, gt, "nan"),
        _custom(tmp_path, cube, bad_gt, "mismatch"),
    ):
        with pytest.raises(DataError, match="NaN|does not match"):
            fetch_dataset("custom", out, custom=bad)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    truncated = tmp_path / "mine" / "cube.npy"
    np.save(truncated, cube)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="cube.npy"):
        fetch_dataset(
            "custom", out, custom={"cube": str(truncated), "gt": str(tmp_path / "mine" / "gt.npy")}
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_raw(out)[0].shape == cube.shape
    assert [p.name for p in out.parent.iterdir()] == ["custom"]  # no staging folder left


def test_flattened_cube_with_nrow_ncol_is_reshaped(tmp_path):
    import scipy.io

    from pipeline.data.loaders import load_cube

    rows, cols, bands = 4, 3, 5
    cube = np.arange(rows * cols * bands, dtype=np.float64).reshape(rows, cols, bands)
    flat = cube.reshape(rows * cols, bands, order="F").T  # bands × pixels, MATLAB column order
    path = tmp_path / "flat.mat"
    scipy.io.savemat(path, {"Y": flat, "nRow": rows, "nCol": cols, "nBand": bands})
    np.testing.assert_array_equal(load_cube(path), cube)
    scipy.io.savemat(path, {"Y": flat.T, "nRow": rows, "nCol": cols})  # pixels × bands
    np.testing.assert_array_equal(load_cube(path), cube)
    scipy.io.savemat(path, {"Y": flat})
    with pytest.raises(DataError, match=r"flattened cube \(bands × pixels\).*'nRow' and 'nCol'"):
        load_cube(path, "Y")


def test_robustness_refuses_a_classifier_trained_on_other_prepared_data(tmp_path, monkeypatch):
    from pipeline.data.fetching import fetch_dataset
    from pipeline.stages import robustness

    monkeypatch.chdir(tmp_path)
    cube, labels, split, pca = _scene()
    custom = _custom(tmp_path, cube, labels.astype(np.uint8))
    fetch_dataset("custom", tmp_path / "data" / "raw" / "custom", custom=custom)
    params = validate(
        {
            "dataset": {"name": "custom", "custom": custom},
            "compute": {"device": "cpu"},
            "tracking": {"enabled": False},
        }
    )
    write_prepared(tmp_path, "custom", cube, labels, split, pca)
    seed = params["train"]["seeds"][0]
    _classifier_ckpt(tmp_path / "models" / "custom" / f"hybridsn-seed{seed}.pt", "e" * 64)
    with pytest.raises(DataError, match=rf"eeeeeeeeeeee.*hsi train --model hybridsn --seed {seed}"):
        robustness.run(params)
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "path",
    [
        "data/raw/custom/cube.mat",
        "data/prepared/custom/cube.npy",
        "models/custom/train.json",
        "reports/custom/report.json",
        "data/raw/.indian_pines.fetching-123-ab/x.npy",
    ],
)
def test_outputs_of_a_custom_dataset_are_ignored_by_git(path):
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=root)
    assert proc.returncode == 0, f"{path} is not ignored by git"


def test_staging_folder_of_a_killed_fetch_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from pipeline.data.fetching import fetch_dataset

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "raw" / "custom"
    left = out.parent / f".custom.fetching-{dead.pid}-abc"  # what kill -9 mid-fetch leaves
    left.mkdir(parents=True)
    (left / "cube.npy").write_bytes(b"partial")
    cube, gt = _cube_gt()
    fetch_dataset("custom", out, custom=_custom(tmp_path, cube, gt))
    assert sorted(p.name for p in out.parent.iterdir()) == ["custom"]


def test_evaluate_logs_to_the_run_its_checkpoint_records_not_a_stale_train_json(
    tmp_path, monkeypatch
):
    import contextlib

    from pipeline.stages import evaluate

    monkeypatch.chdir(tmp_path)
    params, _ = _params(tmp_path)
    cube, labels, split, pca = _scene()
    write_prepared(tmp_path, "indian_pines", cube, labels, split, pca)
    fp = prepared_fingerprint(cube, labels, split, pca)
    ckpt = tmp_path / "models" / "indian_pines" / "hybridsn-seed0.pt"
    _classifier_ckpt(ckpt, data_fingerprint=fp, meta={"dataset": "toy", "mlflow_run_id": "new"})
    out = tmp_path / "reports" / "indian_pines" / "hybridsn-seed0"
    out.mkdir(parents=True)
    (out / "train.json").write_text(json.dumps({"mlflow_run_id": "old"}))  # interrupted retrain
    seen = {}

    class _Run:
        def __getattr__(self, name):
            return lambda *a, **k: None

    @contextlib.contextmanager
    def fake_start_run(*args, run_id=None, **kw):
        seen["run_id"] = run_id
        yield _Run()

    monkeypatch.setattr(evaluate, "start_run", fake_start_run)
    evaluate.run(params, "hybridsn", 0)
    assert seen["run_id"] == "new"


def test_raw_fingerprint_changes_with_cube_labels_and_crop():
    from pipeline.provenance import raw_fingerprint

    m = {"cube": {"sha256": "a"}, "gt": {"sha256": "b"}}
    base = raw_fingerprint(m, None)
    assert base == raw_fingerprint({"gt": {"sha256": "b"}, "cube": {"sha256": "a"}}, None)
    assert base != raw_fingerprint({**m, "cube": {"sha256": "c"}}, None)
    assert base != raw_fingerprint({**m, "gt": {"sha256": "c"}}, None)
    assert base != raw_fingerprint(m, [0, 10, 0, 10])


def test_hsi_data_dir_that_is_not_a_folder_is_an_error(tmp_path, monkeypatch):
    from pipeline.data.fetching import DATA_DIR_ENV, fetch_dataset

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "typo"))
    with pytest.raises(DataError, match=r"HSI_DATA_DIR=.*typo is not a directory"):
        fetch_dataset("indian_pines", tmp_path / "raw" / "indian_pines")
    assert not (tmp_path / "raw" / "indian_pines").exists()


def test_denoise_evaluate_refuses_a_denoiser_trained_on_another_raw_scene(tmp_path, monkeypatch):
    from pipeline.data.fetching import fetch_dataset
    from pipeline.models.dncnn import DnCNN
    from pipeline.stages import denoise_evaluate
    from pipeline.stages.common import denoiser_path

    monkeypatch.chdir(tmp_path)
    cube, labels, _, _ = _scene()
    custom = _custom(tmp_path, cube, labels.astype(np.uint8))
    fetch_dataset("custom", tmp_path / "data" / "raw" / "custom", custom=custom)
    params = validate(
        {
            "dataset": {"name": "custom", "custom": custom},
            "denoise": {"models": ["dncnn"]},
            "compute": {"device": "cpu"},
            "tracking": {"enabled": False},
        }
    )
    model = DnCNN(depth=17, channels=64)
    save_checkpoint(
        denoiser_path(params, "dncnn"),
        kind="dncnn",
        state_dict=model.state_dict(),
        model_config=model.config,
        band_min=cube.min(axis=(0, 1)),
        band_max=cube.max(axis=(0, 1)),
        noise={"sigma": 30.0},
        split={"height": cube.shape[0], "train_rows": [0, 6], "test_rows": [10, 12], "gap_rows": 4},
        meta={"shape": list(cube.shape)},
        data_fingerprint="e" * 64,  # trained before the scene was fetched again
    )
    with pytest.raises(
        DataError,
        match=r"dncnn\.pt: made from data fingerprint eeeeeeeeeeee.*"
        r"hsi denoise_train --model dncnn",
    ):
        denoise_evaluate.run(params)
    assert not (tmp_path / "reports").exists()


def test_robustness_refuses_a_denoiser_trained_on_another_raw_scene(tmp_path, monkeypatch):
    from pipeline.data.fetching import fetch_dataset
    from pipeline.models.dncnn import DnCNN
    from pipeline.stages import robustness
    from pipeline.stages.common import denoiser_path

    monkeypatch.chdir(tmp_path)
    cube, labels, split, pca = _scene()
    custom = _custom(tmp_path, cube, labels.astype(np.uint8))
    fetch_dataset("custom", tmp_path / "data" / "raw" / "custom", custom=custom)
    params = validate(
        {
            "dataset": {"name": "custom", "custom": custom},
            "denoise": {"models": ["dncnn"]},
            "compute": {"device": "cpu"},
            "tracking": {"enabled": False},
        }
    )
    write_prepared(tmp_path, "custom", cube, labels, split, pca)
    seed = params["denoise"]["robustness_seed"]
    fp = prepared_fingerprint(cube, labels, split, pca)
    _classifier_ckpt(tmp_path / "models" / "custom" / f"hybridsn-seed{seed}.pt", fp)
    model = DnCNN(depth=17, channels=64)
    save_checkpoint(
        denoiser_path(params, "dncnn"),
        kind="dncnn",
        state_dict=model.state_dict(),
        model_config=model.config,
        band_min=cube.min(axis=(0, 1)),
        band_max=cube.max(axis=(0, 1)),
        noise={"sigma": 30.0},
        split={"height": cube.shape[0], "train_rows": [0, 6], "test_rows": [10, 12], "gap_rows": 4},
        meta={"shape": list(cube.shape)},
        data_fingerprint="e" * 64,
    )
    with pytest.raises(DataError, match=r"dncnn\.pt: made from data fingerprint eeeeeeeeeeee"):
        robustness.run(params)
    assert not (tmp_path / "reports").exists()
