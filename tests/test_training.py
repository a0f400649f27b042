import numpy as np
import pytest
import torch
from prepared import prepared_data, train_cfg

from pipeline.evaluation.inference import predict_scene
from pipeline.models import MODELS, build_model
from pipeline.params import validate
from pipeline.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from pipeline.training.classifier import train_classifier

K, P = 16, 11


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    labels = np.zeros((24, 26), np.int64)
    labels[2:22, 1:12] = 1
    labels[2:22, 14:25] = 2
    labels[10:14, 5:20] = 3
    cube = rng.normal(size=(24, 26, K)).astype(np.float32)
    for c in (1, 2, 3):
        cube[labels == c, c] += 2.0
    labelled = labels > 0
    train = labelled & (rng.random(labels.shape) < 0.4)
    val = labelled & ~train & (rng.random(labels.shape) < 0.3)
    return cube, labels, train, val


def _train(scene, seed=0, epochs=2, name="hybridsn"):
    cube, labels, train, val = scene
    torch.manual_seed(123)
    model = build_model(name, K, P, 3, dropout=0.4)
    cfg = train_cfg(epochs=epochs, batch_size=32)
    result = train_classifier(
        model, prepared_data(cube, labels, train, val), cfg, seed=seed, patch_size=P,
        device="cpu", progress=False,
    )  # fmt: skip
    return model, result


def test_deterministic_on_cpu(scene):
    _, a = _train(scene)
    _, b = _train(scene)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k])


def test_keeps_best_validation_epoch(scene):
    model, result = _train(scene, epochs=3)
    val = [r["val_oa"] for r in result.history]
    assert result.best_score == max(val)
    assert result.best_epoch == val.index(max(val)) + 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.state_dict[k])
    assert result.wall_time_s > 0 and {"train_loss", "val_loss", "lr"} <= set(result.history[0])


def test_early_stopping(scene):
    cube, labels, train, val = scene
    model = build_model("hybridsn", K, P, 3, dropout=0.4)
    cfg = train_cfg(epochs=30, batch_size=64, lr=1e-9, early_stopping=2)
    result = train_classifier(
        model, prepared_data(cube, labels, train, val), cfg, seed=0, patch_size=P,
        device="cpu", progress=False,
    )  # fmt: skip
    assert result.stopped_early and len(result.history) < 30


def test_checkpoint_round_trip(scene, tmp_path):
    cube, *_ = scene
    model, result = _train(scene, epochs=1, name="hybridsn_dsc")
    pca = {"mean": np.zeros(3), "components": np.eye(3), "whiten": np.array(False)}
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        state_dict=result.state_dict,
        model_config=model.config,
        pca=pca,
        patch={"size": P, "padding": "zero"},
        class_names=["a", "b", "c"],
        meta={"dataset": "toy"},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["model_config"]["name"] == "hybridsn_dsc"
    ckpt = load_checkpoint(path)
    np.testing.assert_array_equal(ckpt["pca"]["components"], np.eye(3))
    again = load_model(ckpt)
    model.eval()
    x = torch.randn(5, 1, K, P, P)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from pipeline.errors import DataError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        load_checkpoint(bad)


@pytest.mark.parametrize("name", list(MODELS))
def test_scene_map_dense_equals_patches(name, scene):
    cube, *_ = scene
    torch.manual_seed(0)
    model = build_model(name, K, P, 3, dropout=0.4).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        dense = predict_scene(model, cube, P, dense=True, strip_rows=7)
        patches = predict_scene(model, cube, P, dense=False, batch_size=100)
    assert patches.method == "patches"
    assert dense.method == ("dense" if model.supports_dense else "shared")
    assert dense.labels.shape == cube.shape[:2]
    np.testing.assert_array_equal(dense.labels, patches.labels)


def test_mlflow_run_holds_params_and_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from pipeline.tracking import start_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    params = validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    (tmp_path / "curve.csv").write_text("epoch,loss\n1,0.5\n")
    with start_run(params, "toy", "hybridsn-seed0", {"stage": "train"}) as run:
        run.log_params({"train.lr": 0.001, "n_params": 42, "pca.components": None})
        for step in (1, 2):
            run.log_metrics({"train_loss": 1.0 / step, "val_oa": 0.5 * step}, step=step)
        run.log_artifact(tmp_path / "curve.csv")
        run_id = run.run_id
    with start_run(params, "toy", "hybridsn-seed0", {"stage": "evaluate"}, run_id=run_id) as run:
        run.log_metrics({"test_oa": 0.9})
    client = mlflow.MlflowClient(tracking_uri=params["tracking"]["uri"])
    exp = client.get_experiment_by_name("toy/classification")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.run_name == "hybridsn-seed0"
    assert r.data.params["train.lr"] == "0.001" and r.data.params["n_params"] == "42"
    assert r.data.metrics["test_oa"] == 0.9
    history = client.get_metric_history(r.info.run_id, "val_oa")
    assert [m.value for m in history] == [0.5, 1.0]
    assert r.data.tags["stage"] == "train" and "git_commit" in r.data.tags


def test_tracking_disabled_is_a_no_op(tmp_path, monkeypatch):
    from pipeline.tracking import start_run

    monkeypatch.chdir(tmp_path)
    params = validate({"tracking": {"enabled": False}})
    with start_run(params, "toy", "x") as run:
        run.log_metrics({"a": 1.0})
        assert not run.active
    assert not (tmp_path / "mlflow.db").exists()


def test_core_imports_without_mlflow_or_dvc():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('mlflow', 'dvc'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pipeline.data.fetching, pipeline.data.splits, pipeline.data.patches\n"
        "import pipeline.models, pipeline.training.classifier, pipeline.training.checkpoint\n"
        "import pipeline.evaluation.inference, pipeline.evaluation.metrics\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
