"""MLflow tracking as a lab uses it: the stages log to a real `mlflow server` (SQLite backend) on
127.0.0.1, checked through the server's REST API; plus a fresh SQLite store hit by two first
runs at once, Ctrl-C and kill -9 leaving no RUNNING run, unsafe registered models refused, and
the store's faults (a silent or dead server, a truncated file, a server dying mid-run) reported in
one line, fast, without losing a stage's outputs."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import cli, tracking
from pipeline.errors import DataError
from pipeline.tracking import TrackingError

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


@contextlib.contextmanager
def _mlflow_server(where: Path):
    """`mlflow server` on a free port of 127.0.0.1 with a SQLite backend, in a process group of
    its own (its workers end with it); yields its URL and process."""
    where.mkdir(parents=True, exist_ok=True)
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
        start_new_session=True,
    )
    try:
        _wait_healthy(url, proc)
        yield url, proc
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """End a server started by _mlflow_server and its workers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A lab's shared store."""
    with _mlflow_server(tmp_path_factory.mktemp("server")) as (url, _):
        yield url


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


def test_report_links_the_runs_it_compares_without_nesting_them(server, project):
    """Every training run stays a top-level row (MLflow's UI collapses nested runs and charts
    only the rows it shows); the report is linked by a tag, and the experiment's saved view
    shows the comparison as columns."""
    root, decoy = project
    runs = {r["info"]["run_id"]: r for r in _runs(server, "classification")}
    (report,) = [r for r in runs.values() if r["info"]["run_name"] == "report"]
    linked = {
        rid
        for rid, r in runs.items()
        if _tags(r).get("hsi.report_run_id") == report["info"]["run_id"]
    }
    assert linked == set(_train_run_ids(root).values())
    assert decoy not in linked
    assert not any("mlflow.parentRunId" in _tags(r) for r in runs.values())
    assert _tags(report)[tracking.ROLE_TAG] == "report"
    exp = _experiment(server, "classification")
    tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    view = json.loads(json.loads(tags[f"mlflow.sharedViewState.{tracking.VIEW_ID}"])["state"])
    for column in ("params.`model`", "params.`seed`", "params.`protocol`", "metrics.`test_oa`"):
        assert column in view["selectedColumns"]
    assert _tags(report)["hsi.compare_view"] == tracking.view_path(exp["experiment_id"])


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
        assert ds["name"] == f"{DATASET}/{_tags(runs[rid])['protocol']}"
        profile = json.loads(ds["profile"])
        assert profile["sha256"] == meta["cube_sha256"]
        assert profile["shape"] == meta["shape"]
        assert profile["counts"] == {k: int(split[k].sum()) for k in ("train", "val", "test")}
        assert profile["protocol"] == _tags(runs[rid])["protocol"]
    (report,) = [r for r in runs.values() if r["info"]["run_name"] == "report"]
    name = report["inputs"]["dataset_inputs"][0]["dataset"]["name"]
    assert name == f"{DATASET}/{_tags(report)['protocol']}"
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


def test_cut_off_cells_end_killed_unless_their_outputs_were_written(server):
    """A study interrupted by Ctrl-C: its linked runs still RUNNING, and those FINISHED on a
    worker whose result never reached the driver, end KILLED; the written ones stay FINISHED."""
    import mlflow

    client = mlflow.MlflowClient(server)
    params = _params_for(server)
    with tracking.start_run(params, "cutoff", "study") as parent:
        cells = {}
        for name, end in (("written", True), ("lost", True), ("running", False)):
            with tracking.start_run(
                params, "cutoff", name, {"hsi.study_run_id": parent.run_id}
            ) as run:
                cells[name] = run.run_id
            if not end:
                client.update_run(run.run_id, status="RUNNING")
        with tracking.start_run(params, "cutoff", "other") as other:
            pass
        assert parent.end_linked("study", "KILLED", keep=[cells["written"]]) == 2
    status = {n: client.get_run(i).info.status for n, i in cells.items()}
    assert status == {"written": "FINISHED", "lost": "KILLED", "running": "KILLED"}
    assert client.get_run(other.run_id).info.status == "FINISHED"


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


@pytest.fixture
def silent_server():
    """A socket on 127.0.0.1 that accepts connections and never answers; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        done.set()
        sock.close()
        for conn in held:
            conn.close()


def _one_error_line(capsys, stage: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(f"hsi {stage}:")]
    assert len(err) == 1, err
    return err[0]


def _stage_opening_a_run(monkeypatch) -> None:
    """`hsi report` replaced by a stage that only checks the store and opens a run, as every
    tracked stage does first."""

    def opens_a_run(params, args):
        tracking.check_store(params)
        with tracking.start_run(params, "faults", "run"):
            raise AssertionError("the run must not open")

    monkeypatch.setattr("pipeline.stages.report.main", opens_a_run)


@pytest.mark.parametrize("fault", ["silent", "dead"])
def test_unusable_server_is_one_line_error_within_30s(
    fault, silent_server, tmp_path, monkeypatch, capsys
):
    """`$MLFLOW_TRACKING_URI` at a server that never answers, or at a port nobody listens on:
    the preflight alone, then a stage through the CLI, each fail in one line in under 30 s
    (MLflow's own retries took 15 min and 4 min 13 s)."""
    if fault == "silent":
        url, problem = silent_server, "does not answer"
    else:
        url, problem = f"http://127.0.0.1:{_free_port()}", "cannot be reached"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    from pipeline.params import load_params

    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=problem):
        tracking.check_store(load_params())
    assert time.monotonic() - t0 < 15

    _stage_opening_a_run(monkeypatch)
    t0 = time.monotonic()
    assert cli.main(["report"]) == 2
    assert time.monotonic() - t0 < 30
    line = _one_error_line(capsys, "report")
    assert url in line and problem in line and "tracking.enabled: false" in line


def test_truncated_sqlite_store_is_one_line_error(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = _params_for(uri)
    with tracking.start_run(params, "trunc", "first") as run:
        run.log_metrics({"x": 1.0})
    db = tmp_path / "mlflow.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    tracking._CHECKED.discard(uri)
    tracking._PREPARED.discard(uri)
    with pytest.raises(TrackingError, match="truncated"):
        tracking.check_store(params)

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"uri": uri}}))
    _stage_opening_a_run(monkeypatch)
    assert cli.main(["report"]) == 2
    line = _one_error_line(capsys, "report")
    assert uri in line and "truncated" in line


def test_server_dying_mid_run_keeps_the_training_and_reports_it_after(
    tmp_path, monkeypatch, capsys
):
    """The server is alive when `hsi train` starts and is killed as training begins: the
    checkpoint and train.json are written, then the CLI says in one line that tracking failed
    and exits non-zero."""
    with _mlflow_server(tmp_path / "server") as (url, proc):
        root = tmp_path / "project"
        root.mkdir()
        params = {**PARAMS, "tracking": {"enabled": True, "uri": url}}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        monkeypatch.chdir(root)
        for k in [k for k in os.environ if k.startswith(("MLFLOW_TRACKING", "HSI_"))]:
            monkeypatch.delenv(k)
        monkeypatch.setenv("HSI_DATA_DIR", "")
        _hsi("fetch")
        _hsi("prepare")

        from pipeline import runs

        real, killed = runs.train_model, []

        def server_dies_then_train(*args, **kwargs):
            _stop(proc)
            killed.append(time.monotonic())
            return real(*args, **kwargs)

        monkeypatch.setattr(runs, "train_model", server_dies_then_train)
        rc = cli.main(["train", "--model", MODEL, "--seed", "0"])
        after_kill = time.monotonic() - killed[0]
    assert rc == 2
    line = _one_error_line(capsys, "train")
    assert "failed mid-run" in line and url in line
    out = root / "reports" / DATASET / f"{MODEL}-seed0"
    summary = json.loads((out / "train.json").read_text())
    assert summary["mlflow_run_id"] and summary["epochs_run"] == PARAMS["train"]["epochs"]
    assert (out / "history.csv").is_file()
    assert list((root / "models").rglob(f"{MODEL}-seed0*.pt"))
    assert after_kill < 60


def test_predict_from_the_registry_with_tracking_off_creates_no_store(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    np.save(tmp_path / "scene.npy", np.zeros((4, 4, 8), dtype=np.float32))
    argv = ["predict", "--model", f"models:/{MODEL}-{DATASET}/1", "--cube", "scene.npy"]

    (tmp_path / "params.yaml").write_text("tracking:\n  enabled: false\n")
    assert cli.main(argv) == 2
    assert "tracking is off" in _one_error_line(capsys, "predict")

    (tmp_path / "params.yaml").unlink()  # no params: the default store, which must exist
    assert cli.main(argv) == 2
    assert "no MLflow store" in _one_error_line(capsys, "predict")
    assert not (tmp_path / "mlflow.db").exists()


@dataclass(frozen=True)
class _Tracking:
    enabled: bool
    uri: str | None


@dataclass(frozen=True)
class _Params:
    tracking: _Tracking


def test_params_as_frozen_dataclasses(tmp_path):
    """`params.tracking.uri` works as well as `params["tracking"]["uri"]`."""
    import mlflow

    off = _Params(_Tracking(False, None))
    assert tracking.check_store(off) is None
    with tracking.start_run(off, "dc", "off") as run:
        run.log_metrics({"x": 1.0})
    assert not run.active and run.run_id is None
    with (
        pytest.raises(TrackingError, match="tracking is off"),
        tracking.checkpoint_file("models:/m/1", off),
    ):
        pass

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    on = _Params(_Tracking(True, uri))
    assert tracking.resolve_uri(on) == uri and tracking.check_store(on) == uri
    with tracking.start_run(on, "dc", "on") as run:
        run.log_metrics({"x": 1.0})
    assert mlflow.MlflowClient(uri).get_run(run.run_id).data.metrics == {"x": 1.0}


def test_per_sigma_metric_names():
    scores = {30.0: {"mpsnr": 31.5, "sam": float("nan")}, 10: {"mssim": 0.9, "rank": None}}
    assert tracking.per_sigma(scores) == {"mpsnr_sigma30": 31.5, "mssim_sigma10": 0.9}
