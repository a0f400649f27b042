"""`dvc repro` end to end in a temp copy of the repo, on a small crop of the real Indian Pines."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SKIP = {".git", ".venv", "mlruns", "mlartifacts", "mlflow.db", ".pytest_cache", ".ruff_cache"}

pytestmark = pytest.mark.integration


def _copy_repo(dst: Path) -> None:
    def ignore(folder, names):
        rel = Path(folder).relative_to(REPO)
        skipped = {n for n in names if n in SKIP or n == "__pycache__" or n.endswith(".egg-info")}
        if rel.parts[:1] in (("data",), ("models",), ("reports",)):
            skipped |= {n for n in names if (Path(folder) / n).is_dir() or n.endswith(".npy")}
        if rel == Path(".dvc"):
            skipped |= {"cache", "tmp"}
        return skipped

    shutil.copytree(REPO, dst, ignore=ignore)


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo") / "hsi"
    _copy_repo(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dataset"]["crop"] = [0, 40, 0, 40]
    params["pca"]["components"] = 16
    params["patch"]["size"] = 11
    params["train"].update(
        models=["hybridsn", "hybridsn_se", "svm", "rf"], seeds=[0, 1], epochs=1, batch_size=64
    )
    params["compute"]["device"] = "cpu"
    params["inference"]["batch_size"] = 256
    params["denoise"].update(
        {
            "models": ["dncnn"],
            "depth": 4,
            "channels": 8,
            "patch_size": 16,
            "batch_size": 8,
            "epochs": 1,
            "steps_per_epoch": 3,
            "eval_sigmas": [30],
            "robustness_sigmas": [0, 30],
        }
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HSI_DATA_DIR"] = ""
    _run(["git", "init", "-q"], root, env)
    proc = _run([str(BIN / "dvc"), "repro"], root, env)
    return root, env, proc


def test_prepare_outputs(repo):
    root, _, _ = repo
    out = root / "data/prepared/indian_pines"
    cube = np.load(out / "cube.npy")
    labels = np.load(out / "labels.npy")
    assert cube.shape == (40, 40, 16) and cube.dtype == np.float32
    assert labels.shape == (40, 40)
    split = json.loads((out / "split.json").read_text())
    assert split["counts"]["train_pool"] + split["counts"]["test"] == int((labels > 0).sum())
    assert split["leakage_share"] > 0.9
    assert (out / "split.png").stat().st_size > 1000
    pca = json.loads((out / "pca.json").read_text())
    assert len(pca["explained_variance_ratio"]) == 16


def test_train_outputs(repo):
    root, _, _ = repo
    for name in ("hybridsn-seed0", "hybridsn-seed1", "hybridsn_se-seed0", "hybridsn_se-seed1"):
        assert (root / f"models/indian_pines/{name}.pt").is_file()
        summary = json.loads((root / f"reports/indian_pines/{name}/train.json").read_text())
        assert summary["epochs_run"] == 1
        history = (root / f"reports/indian_pines/{name}/history.csv").read_text().splitlines()
        assert history[0].startswith("epoch,train_loss,train_oa")
        assert len(history) == 2


def test_mlflow_runs_recorded(repo):
    root, _, _ = repo
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("indian_pines/classification")
    runs = client.search_runs([exp.experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"hybridsn-seed0", "hybridsn_se-seed1"} <= names


def test_second_repro_is_a_no_op(repo):
    root, env, _ = repo
    proc = _run([str(BIN / "dvc"), "repro"], root, env)
    assert "didn't change" in proc.stdout or "up to date" in proc.stdout.lower()


def _own_copy(root: Path, dst: Path) -> Path:
    """params.yaml and the fetched data in a folder of the test's own, so the shared pipeline
    outputs stay as `dvc repro` left them whatever order the tests run in."""
    dst.mkdir()
    shutil.copy2(root / "params.yaml", dst / "params.yaml")
    shutil.copytree(root / "data" / "raw", dst / "data" / "raw")
    return dst


def test_disjoint_experiment_has_no_leakage(repo, tmp_path):
    shared, env, _ = repo
    root = _own_copy(shared, tmp_path / "own")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["protocol"] = "custom"
    params["split"].update(mode="disjoint", guard="window")
    params["pca"]["fit_on"] = "train"
    (root / "params.disjoint.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([str(BIN / "hsi"), "--params", "params.disjoint.yaml", "prepare"], root, env)
    split = json.loads((root / "data/prepared/indian_pines/split.json").read_text())
    assert split["mode"] == "disjoint" and split["guard"] == "window"
    assert split["leakage_share"] == 0.0
    assert split["leakage"]["window"]["train_to_test_pixels"] == 0
    assert split["leakage"]["window"]["train_to_val_pixels"] == 0
    meta = json.loads((root / "data/prepared/indian_pines/meta.json").read_text())
    assert meta["protocol"] == "custom"


def test_leakfree_experiment_is_a_kfold_with_masked_inputs(repo, tmp_path):
    shared, env, _ = repo
    root = _own_copy(shared, tmp_path / "own")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["protocol"] = "leakfree"
    params["split"].update(folds=3, fold=1)
    (root / "params.leakfree.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([str(BIN / "hsi"), "--params", "params.leakfree.yaml", "prepare"], root, env)
    out = root / "data/prepared/indian_pines"
    split = json.loads((out / "split.json").read_text())
    assert split["mode"] == "kfold" and split["fold"] == 1 and split["folds"] == 3
    assert split["leakage"]["window"]["train_to_test_pixels"] == 0
    arrays = np.load(out / "split.npz")
    labels = np.load(out / "labels.npy")
    assert ((arrays["folds"] >= 0) == (labels > 0)).all()
    assert not (arrays["view_train"] & arrays["test"]).any()


def test_fixed_split_from_a_geotiff_mask_runs_prepare_to_report(repo, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    shared, env, _ = repo
    root = _own_copy(shared, tmp_path / "own")
    labels = np.load(shared / "data/prepared/indian_pines/labels.npy")
    rng = np.random.default_rng(0)
    train = (labels > 0) & (rng.random(labels.shape) < 0.3)
    (root / "masks").mkdir()
    tifffile.imwrite(root / "masks" / "train.tif", train.astype(np.uint8))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["protocol"] = "custom"
    params["split"].update(mode="fixed", fixed={"train": "masks/train.tif", "test": None})
    params["pca"]["fit_on"] = "train"
    params["train"].update(models=["hybridsn"], seeds=[0])
    params["denoise"]["robustness_model"] = "hybridsn"
    params["tracking"]["enabled"] = False
    (root / "params.fixed.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    hsi = [str(BIN / "hsi"), "--params", "params.fixed.yaml"]
    for stage in (["prepare"], ["train", "--model", "hybridsn", "--seed", "0"],
                  ["evaluate", "--model", "hybridsn", "--seed", "0"], ["report"]):  # fmt: skip
        _run([*hsi, *stage], root, env)
    split = np.load(root / "data/prepared/indian_pines/split.npz")
    assert np.array_equal(split["train"] | split["val"], train)
    assert np.array_equal(split["test"], (labels > 0) & ~train)
    summary = json.loads((root / "reports/indian_pines/summary.json").read_text())
    assert summary["protocol"] == "custom" and summary["split"]["mode"] == "fixed"
    metrics = json.loads((root / "reports/indian_pines/hybridsn-seed0/metrics.json").read_text())
    assert metrics["n_test"] == int(((labels > 0) & ~train).sum())


def test_prepare_with_wrong_key_names_file_and_keys(repo, tmp_path):
    shared, env, _ = repo
    root = _own_copy(shared, tmp_path / "own")
    import scipy.io

    cube = np.random.default_rng(0).random((12, 12, 20)).astype(np.float32)
    gt = np.zeros((12, 12), np.uint8)
    gt[:6] = 1
    gt[6:] = 2
    scipy.io.savemat(tmp_path / "scene.mat", {"radiance": cube})
    scipy.io.savemat(tmp_path / "scene_gt.mat", {"labels": gt})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dataset"] = {
        "name": "custom",
        "crop": None,
        "custom": {
            "cube": str(tmp_path / "scene.mat"),
            "gt": str(tmp_path / "scene_gt.mat"),
            "cube_key": "reflectance",
        },
    }
    (root / "params.custom.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("fetch", "prepare"):
        proc = subprocess.run(
            [str(BIN / "hsi"), "--params", "params.custom.yaml", stage],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0
        assert "scene.mat" in proc.stderr and "radiance" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_evaluate_outputs_and_dvc_metrics(repo):
    root, env, _ = repo
    run_dir = root / "reports/indian_pines/hybridsn-seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"oa", "aa", "kappa", "n_test"}
    assert 0 <= metrics["oa"] <= 1
    report = json.loads((run_dir / "classification_report.json").read_text())
    assert len(report["per_class"]) == 16
    records = json.loads((run_dir / "confusion.json").read_text())
    assert len(records) == metrics["n_test"]
    assert (run_dir / "confusion.csv").read_text().count("\n") == 17
    for png in ("confusion.png", "maps.png", "prediction.png"):
        assert (run_dir / png).stat().st_size > 5000
    pred = np.load(root / "reports/indian_pines/predictions/hybridsn-seed0.npy")
    assert pred.shape == (40, 40) and pred.min() >= 1 and pred.max() <= 16
    # OA recomputed with plain numpy from the saved scene prediction, labels and test mask
    labels = np.load(root / "data/prepared/indian_pines/labels.npy")
    test = np.load(root / "data/prepared/indian_pines/split.npz")["test"]
    assert metrics["n_test"] == int(test.sum()) > 0
    assert metrics["oa"] == pytest.approx(float(np.mean(pred[test] == labels[test])), abs=1e-9)
    shown = _run([str(BIN / "dvc"), "metrics", "show", "--json"], root, env).stdout
    assert '"oa"' in shown and '"kappa"' in shown


def test_classical_baselines_run_like_any_model(repo):
    """svm and rf go through the same train/evaluate/report stages: checkpoint, scores, maps, an
    MLflow run each, and a column of comparisons against svm in the report."""
    root, _, _ = repo
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("indian_pines/classification")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    for name in ("svm-seed0", "svm-seed1", "rf-seed0", "rf-seed1"):
        assert (root / f"models/indian_pines/{name}.pt").is_file()
        run_dir = root / f"reports/indian_pines/{name}"
        assert 0 < json.loads((run_dir / "metrics.json").read_text())["oa"] <= 1
        for png in ("maps.png", "prediction.png", "confusion.png"):
            assert (run_dir / png).stat().st_size > 5000
        assert "test_oa" in runs[name].data.metrics
    summary = json.loads((root / "reports/indian_pines/summary.json").read_text())
    assert set(summary["comparisons"]["svm"]) == {"hybridsn", "hybridsn_se", "rf"}
    assert summary["models"]["svm"]["oa"]["n"] == 2


def test_report_summary(repo):
    root, _, _ = repo
    summary = json.loads((root / "reports/indian_pines/summary.json").read_text())
    assert summary["baseline"] == "hybridsn"
    assert summary["models"]["hybridsn"]["oa"]["n"] == 2
    mcnemar = summary["comparisons"]["hybridsn"]["hybridsn_se"]["mcnemar"]
    assert [r["seed"] for r in mcnemar] == [0, 1]
    run = json.loads((root / "reports/indian_pines/hybridsn-seed1/metrics.json").read_text())
    assert summary["models"]["hybridsn"]["runs"]["hybridsn-seed1"]["oa"] == run["oa"]
    md = (root / "reports/indian_pines/summary.md").read_text()
    assert "McNemar" in md and "hybridsn_se" in md
    assert (root / "reports/indian_pines/variants_maps.png").stat().st_size > 5000


def test_predict_on_users_mat_cube(repo, tmp_path):
    root, env, _ = repo
    import scipy.io

    from pipeline.data.fetching import load_raw

    cube, _, _ = load_raw(root / "data/raw/indian_pines")
    scipy.io.savemat(tmp_path / "field.mat", {"field_cube": cube[50:80, 60:95]})
    ckpt = root / "models/indian_pines/hybridsn-seed0.pt"
    _run(
        [
            str(BIN / "hsi"),
            "predict",
            "--checkpoint",
            str(ckpt),
            "--cube",
            str(tmp_path / "field.mat"),
            "--device",
            "cpu",
        ],
        root,
        env,
    )
    label_map = np.load(tmp_path / "field_map.npy")
    assert label_map.shape == (30, 35)
    assert (tmp_path / "field_map.png").stat().st_size > 1000

    scipy.io.savemat(tmp_path / "few_bands.mat", {"cube": cube[:20, :20, :100]})
    proc = subprocess.run(
        [
            str(BIN / "hsi"),
            "predict",
            "--checkpoint",
            str(ckpt),
            "--cube",
            str(tmp_path / "few_bands.mat"),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "100 bands" in proc.stderr and "200" in proc.stderr


def test_denoise_and_robustness_outputs(repo):
    root, _, _ = repo
    metrics = json.loads((root / "reports/indian_pines/denoise/metrics.json").read_text())
    assert {"noisy", "gaussian", "dncnn"} <= set(metrics["sigma30"])
    assert metrics["sigma30"]["gaussian"]["mpsnr"] > metrics["sigma30"]["noisy"]["mpsnr"]
    assert (root / "reports/indian_pines/denoise/comparison.png").stat().st_size > 5000
    rows = (root / "reports/indian_pines/robustness/oa_vs_sigma.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["sigma", "oa_noisy", "oa_denoised"]
    assert [float(r.split(",")[0]) for r in rows[1:]] == [0, 30]
    assert (root / "reports/indian_pines/robustness/oa_vs_sigma.png").stat().st_size > 5000


def test_evaluate_refuses_checkpoint_after_prepare_with_other_pca(repo, tmp_path):
    """Acceptance (issue 11): after `prepare` with a different PCA, `evaluate` on the old
    checkpoint exits non-zero with one line naming both fingerprints, and writes nothing."""
    shared, env, _ = repo
    root = _own_copy(shared, tmp_path / "own")
    for part in ("models", "reports"):
        shutil.copytree(shared / part, root / part)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pca"]["components"] = int(params["pca"]["components"] or 30) - 5
    (root / "params.pca.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([str(BIN / "hsi"), "--params", "params.pca.yaml", "prepare"], root, env)
    metrics = root / "reports/indian_pines/hybridsn-seed0/metrics.json"
    before = metrics.read_bytes()
    for stage in (["evaluate", "--model", "hybridsn", "--seed", "0"], ["report"]):
        proc = subprocess.run(
            [str(BIN / "hsi"), "--params", "params.pca.yaml", *stage],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert "made from data fingerprint" in line and "Traceback" not in proc.stderr
    assert "hsi evaluate --model hybridsn --seed 0" in line
    assert metrics.read_bytes() == before


def test_dvc_queue_runs_two_experiments_in_parallel_into_one_mlflow_store(repo, tmp_path):
    """Acceptance (issues 11 and 14): `dvc exp run --queue` × 2 then `dvc queue start -j 2` on a
    repo without mlflow.db: both experiments finish, both training runs land in the repo's store
    (DVC runs them in .dvc/tmp/exps copies), and `make compare` lists both."""
    import mlflow

    shared, env, _ = repo

    def ignore(folder, names):
        skipped = {n for n in names if n.startswith("mlflow.db") or n == "mlruns"}
        return skipped | ({"tmp"} if Path(folder).name == ".dvc" else set())

    root = tmp_path / "queue"
    shutil.copytree(shared, root, ignore=ignore)
    env = {
        **env,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    _run(["git", "add", "-A"], root, env)
    # as in a clone of ours: the stage outputs under reports/<dataset>/ are not committed, and
    # DVC commits the uncached ones (metrics, curves) into each experiment
    _run(["git", "rm", "-rq", "--cached", "--ignore-unmatch", "reports/indian_pines"], root, env)
    _run(["git", "commit", "-qm", "baseline"], root, env)
    dvc = str(BIN / "dvc")
    for name, lr in (("lr-a", "0.002"), ("lr-b", "0.003")):
        queue = ["exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}"]
        _run([dvc, *queue, "evaluate@hybridsn-0"], root, env)
    _run([dvc, "queue", "start", "-j", "2"], root, env)
    end = time.monotonic() + 600
    status = ""
    while time.monotonic() < end:
        status = _run([dvc, "queue", "status"], root, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    _run([dvc, "queue", "stop"], root, env)
    assert status.count("Success") == 2, status

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("indian_pines/classification")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.002", "0.003"]
    assert all(r.info.status == "FINISHED" and "test_oa" in r.data.metrics for r in runs)

    table = _run([sys.executable, str(REPO / "tools" / "compare.py")], root, env).stdout
    lines = table.splitlines()
    assert max(map(len, lines)) <= 100
    named = [line.split()[:3] for line in lines if line.startswith(("lr-a", "lr-b"))]
    assert ["lr-a", "hybridsn", "0"] in named and ["lr-b", "hybridsn", "0"] in named


def test_dvc_plots_show_draws_every_trained_run_on_one_chart(repo):
    """`report`'s val_oa.csv with the by_run template: one chart with the validation curve of
    every trained run, whatever train.models holds (no model name in dvc.yaml)."""
    root, env, _ = repo
    shown = json.loads(_run([str(BIN / "dvc"), "plots", "show", "--json"], root, env).stdout)
    (chart,) = shown["data"]["reports/indian_pines/val_oa.csv"]
    values = chart["content"]["data"]["values"]
    runs = {"hybridsn-seed0", "hybridsn-seed1", "hybridsn_se-seed0", "hybridsn_se-seed1"}
    assert {v["run"] for v in values} == runs
    assert all("val_oa" in v for v in values)
