"""MLflow tracking as a lab uses it: the stages log to a real `mlflow server` (SQLite backend) on
127.0.0.1, checked through the server's REST API; plus a fresh SQLite store hit by two first
runs at once, Ctrl-C and kill -9 leaving no RUNNING run, and unsafe registered models refused."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import cli, tracking
from pipeline.errors import DataError

BIN = Path(sys.executable).parent
DATASET = "indian_pines"
MODEL = "hybridsn"
SEEDS = (0, 1)
PARAMS = {
    "dataset": {"name": DATASET, "crop": [0, 40, 0, 40]},
    "pca": {"components": 16},
    "patch": {"size": 11},
    "train": {
        "models": [MODEL],
        "seeds": list(SEEDS),
        "epochs": 1,
        "batch_size": 64,
    },
    "compute": {"device": "cpu"},
    "inference": {"batch_size": 256},
    "denoise": {
        "models": ["dncnn"],
        "depth": 4,
        "channels": 8,
        "patch_size": 16,
        "batch_size": 8,
        "epochs": 1,
        "steps_per_epoch": 2,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1 with a SQLite backend: a lab's shared store."""
    where = tmp_path_factory.mktemp("server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(where / "server.log", "w")  # noqa: SIM115 - open while the server runs
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{where / 'mlflow.db'}",
            "--artifacts-destination",
            str(where / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "MLFLOW_DISABLE_TELEMETRY": "true",
        },
    )
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    full = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        full += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _hsi(*argv: str) -> None:
    assert cli.main(list(argv)) == 0, f"hsi {' '.join(argv)} failed"


@pytest.fixture(scope="module")
def project(server, tmp_path_factory):
    """The stages run in a fresh folder with ``tracking.uri`` pointing at the server. A decoy run
    named like the first training run is started before `evaluate`: evaluate must follow the
    run id that `train` recorded, not the name."""
    root = tmp_path_factory.mktemp("project")
    params = {**PARAMS, "tracking": {"enabled": True, "uri": server}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    old = os.getcwd()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("MLFLOW_", "HSI_"))}
    os.environ["HSI_DATA_DIR"] = ""
    os.chdir(root)
    try:
        _hsi("fetch")
        _hsi("prepare")
        for seed in SEEDS:
            _hsi("train", "--model", MODEL, "--seed", str(seed))
        decoy = _api(
            server,
            "runs/create",
            {
                "experiment_id": _experiment(server, "classification")["experiment_id"],
                "run_name": f"{MODEL}-seed0",
            },
        )["run"]["info"]["run_id"]
        for seed in SEEDS:
            _hsi("evaluate", "--model", MODEL, "--seed", str(seed))
        _hsi("report")
        _hsi("denoise_train")
        yield root, decoy
    finally:
        os.chdir(old)
        os.environ.pop("HSI_DATA_DIR", None)
        os.environ.update(saved)


def _experiment(url: str, task: str) -> dict:
    name = f"{DATASET}/{task}"
    return _api(url, "experiments/get-by-name", experiment_name=name)["experiment"]


def _runs(url: str, task: str) -> list[dict]:
    exp = _experiment(url, task)
    return _api(url, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _metrics(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _train_run_ids(root: Path) -> dict[int, str]:
    rep = root / "reports" / DATASET
    return {
        s: json.loads((rep / f"{MODEL}-seed{s}" / "train.json").read_text())["mlflow_run_id"]
        for s in SEEDS
    }


def test_classification_and_denoising_runs_in_their_own_experiments(server, project):
    classification = {r["info"]["run_name"] for r in _runs(server, "classification")}
    denoising = {r["info"]["run_name"] for r in _runs(server, "denoising")}
    assert {f"{MODEL}-seed0", f"{MODEL}-seed1", "report"} <= classification
    assert denoising == {"dncnn"}


def test_report_run_is_parent_of_the_runs_it_compares(server, project):
    root, decoy = project
    runs = {r["info"]["run_id"]: r for r in _runs(server, "classification")}
    (report,) = [r for r in runs.values() if r["info"]["run_name"] == "report"]
    children = {
        rid
        for rid, r in runs.items()
        if _tags(r).get("mlflow.parentRunId") == report["info"]["run_id"]
    }
    assert children == set(_train_run_ids(root).values())
    assert decoy not in children


def test_evaluate_reopens_the_training_run_by_id(server, project):
    root, decoy = project
    runs = {r["info"]["run_id"]: r for r in _runs(server, "classification")}
    for seed, rid in _train_run_ids(root).items():
        run = runs[rid]
        assert run["info"]["status"] == "FINISHED"
        metrics = _metrics(run)
        assert "best_val_oa" in metrics and "test_oa" in metrics
        oa = json.loads(
            (root / "reports" / DATASET / f"{MODEL}-seed{seed}" / "metrics.json").read_text()
        )
        assert metrics["test_oa"] == pytest.approx(oa["oa"])
    assert "test_oa" not in _metrics(runs[decoy])


def test_group_by_params_and_protocol_tags(server, project):
    root, _ = project
    meta = json.loads((root / "data" / "prepared" / DATASET / "meta.json").read_text())
    runs = {r["info"]["run_id"]: r for r in _runs(server, "classification")}
    for seed, rid in _train_run_ids(root).items():
        params, tags = _params(runs[rid]), _tags(runs[rid])
        assert params["model"] == MODEL and params["seed"] == str(seed)
        assert params["protocol"] == tags["protocol"] == tracking.protocol_of(meta, _validated())
        if tracking.fingerprint_of(meta):
            assert tags["data_fingerprint"] == tracking.fingerprint_of(meta)
        assert tags["task"] == "classification"


def _validated() -> dict:
    """The params the stages ran with, defaults filled in."""
    from pipeline.params import validate

    return validate(json.loads(json.dumps(PARAMS)))


def test_every_training_run_logs_its_dataset_input(server, project):
    root, _ = project
    meta = json.loads((root / "data" / "prepared" / DATASET / "meta.json").read_text())
    runs = {r["info"]["run_id"]: r for r in _runs(server, "classification")}
    split = np.load(root / "data" / "prepared" / DATASET / "split.npz")
    for rid in _train_run_ids(root).values():
        inputs = runs[rid]["inputs"]["dataset_inputs"]
        assert inputs, "no dataset input"
        ds = inputs[0]["dataset"]
        assert ds["name"] == DATASET
        profile = json.loads(ds["profile"])
        assert profile["sha256"] == meta["cube_sha256"]
        assert profile["shape"] == meta["shape"]
        assert profile["counts"] == {k: int(split[k].sum()) for k in ("train", "val", "test")}
        assert profile["protocol"] == _tags(runs[rid])["protocol"]
    (report,) = [r for r in runs.values() if r["info"]["run_name"] == "report"]
    assert report["inputs"]["dataset_inputs"][0]["dataset"]["name"] == DATASET
    (dncnn,) = _runs(server, "denoising")
    ds = dncnn["inputs"]["dataset_inputs"][0]["dataset"]
    assert ds["name"] == DATASET and json.loads(ds["profile"])["sha256"] == meta["cube_sha256"]


def test_registered_model_versions_and_predict_from_the_registry(server, project, tmp_path):
    root, _ = project
    versions = _api(server, "model-versions/search", filter=f"name='{MODEL}-{DATASET}'")
    versions = versions["model_versions"]
    assert sorted(int(v["version"]) for v in versions) == [1, 2]
    assert {v["run_id"] for v in versions} == set(_train_run_ids(root).values())
    dn = _api(server, "model-versions/search", filter=f"name='dncnn-{DATASET}'")["model_versions"]
    assert len(dn) == 1

    raw = np.load(root / "data" / "raw" / DATASET / "Indian_pines_corrected.npy")
    np.save(tmp_path / "scene.npy", raw[:20, :24])
    old = os.getcwd()
    os.chdir(root)  # params.yaml there names the server
    try:
        _hsi(
            "predict",
            "--model",
            f"models:/{MODEL}-{DATASET}/2",
            "--cube",
            str(tmp_path / "scene.npy"),
        )
    finally:
        os.chdir(old)
    labels = np.load(tmp_path / "scene_map.npy")
    assert labels.shape == (20, 24) and labels.min() >= 1


def _params_for(uri: str) -> dict:
    from pipeline.params import validate

    return validate({"tracking": {"enabled": True, "uri": uri}})


def test_registered_model_that_needs_unpickling_is_refused(server, tmp_path, monkeypatch):
    """A `pytorch`-flavoured MLflow model (a pickled module) must not be loaded."""
    import mlflow
    from mlflow.models import Model

    class Pickled:
        __name__ = "mlflow.pytorch"

        @staticmethod
        def save_model(path, mlflow_model, **kwargs):
            Path(path).mkdir(parents=True)
            (Path(path) / "model.pth").write_bytes(b"pickled code would be here")
            mlflow_model.add_flavor("pytorch", model_data="model.pth", pickle_module_name="pickle")
            mlflow_model.save(str(Path(path) / "MLmodel"))

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(server)
    mlflow.set_experiment("unsafe")
    with mlflow.start_run():
        Model.log(None, name="m", flavor=Pickled(), registered_model_name="unsafe-model")
    params = _params_for(server)
    with (
        pytest.raises(DataError, match="refused.*unpickle"),
        tracking.checkpoint_file("models:/unsafe-model/1", params),
    ):
        pass


def test_ctrl_c_ends_the_run_killed_and_the_cli_says_so(server, tmp_path, monkeypatch, capsys):
    import mlflow

    params = _params_for(server)
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.start_run(params, "sigint", "interrupted") as run,
    ):
        raise KeyboardInterrupt
    assert mlflow.MlflowClient(server).get_run(run.run_id).info.status == "KILLED"

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")

    def interrupted(params, args):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.stages.report.main", interrupted)
    assert cli.main(["report"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]


def test_run_of_a_killed_process_is_marked_killed(server):
    """kill -9 leaves a RUNNING run; the next run on the same host closes it as KILLED."""
    import mlflow

    client = mlflow.MlflowClient(server)
    params = _params_for(server)
    with tracking.start_run(params, "kill9", "first"):
        pass
    exp = client.get_experiment_by_name("kill9/classification")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = client.create_run(
        exp.experiment_id,
        tags={"hsi.host": socket.gethostname(), "hsi.pid": str(dead.pid)},
    )
    assert client.get_run(orphan.info.run_id).info.status == "RUNNING"
    with tracking.start_run(params, "kill9", "next"):
        pass
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"


RACE = """
import os, sys, time
from pipeline import tracking
from pipeline.params import validate
params = validate({"tracking": {"enabled": True, "uri": sys.argv[1]}})
open(sys.argv[2] + ".ready", "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
with tracking.start_run(params, "race", os.path.basename(sys.argv[2])) as run:
    run.log_metrics({"x": 1.0})
"""


def test_two_first_runs_in_parallel_on_a_fresh_store(tmp_path):
    """Both create the store at the same moment; without the lock one crashes in MLflow's
    schema migration (``duplicate column name``)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, uri, str(tmp_path / name), str(go)],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for name in ("a", "b")
    ]
    end = time.monotonic() + 120
    while not all((tmp_path / f"{n}.ready").exists() for n in "ab") and time.monotonic() < end:
        time.sleep(0.05)
    go.touch()
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-3000:] for e in errs)
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("race/classification")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_queued_workspace_logs_to_the_repository_store(tmp_path):
    """`dvc exp run --queue` runs in .dvc/tmp/exps/<tmp>; its runs go to the repo's mlflow.db."""
    work = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    work.mkdir(parents=True)
    assert tracking.project_root(work) == tmp_path / "repo"
    assert tracking.project_root(tmp_path) == tmp_path
