"""`hsi study` end to end on a tiny Indian Pines crop: its cells equal `prepare`/`train`/`evaluate`
run by hand, a finished cell is not run again, cells spread over a two-node cluster log to one
MLflow server (a local store is refused there), a killed worker's cell resumes to the same
metrics, and Ctrl-C keeps the finished cells.

Every process that starts Ray or an MLflow server runs inside a loopback-only network namespace
(tests/netns.py); this process only reads files and SQLite stores.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import netns
import numpy as np
import pytest
import yaml

from pipeline.data.fetching import fetch_dataset, load_raw
from pipeline.data.prepared import prepare_scene
from pipeline.params import load_params
from pipeline.runs import evaluated_cell
from pipeline.stages.common import RunFiles, cell_files

PY = netns.PYTHON
RAY = str(Path(PY).with_name("ray"))
MLFLOW = str(Path(PY).with_name("mlflow"))
DATASET = "indian_pines"
PROTOCOL = "leakfree"
EXPERIMENT = f"{DATASET}/classification"
PARENT = f"study-{PROTOCOL}"
SCORES = ("oa", "aa", "kappa", "n_test")
TINY = {
    "dataset.crop": [0, 40, 0, 40],
    "pca.components": 16,
    "patch.size": 11,
    "split.folds": 3,
    "train.epochs": 2,
    "inference.batch_size": 256,
    "compute.device": "cpu",
    "study.cpus_per_cell": 1,
    "study.seeds": [0],
    "study.folds": [0, 1],
    "study.engine": "ray",
    "tracking.enabled": False,
}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Indian Pines fetched once from the offline `tensorly` package, copied into each project."""
    out = tmp_path_factory.mktemp("scene") / DATASET
    fetch_dataset(DATASET, out, source="package", progress=False)
    return out


@pytest.fixture
def ns():
    netns.require(ray=True)
    with netns.LoopbackNamespace() as space:
        yield space
    assert not space.pids(), "processes left in the namespace after close"


def params_for(**changes):
    """The repo's params under the leak-free protocol, shrunk to TINY, with dotted `changes`."""
    base = load_params(netns.REPO / "params.yaml").with_protocol(PROTOCOL)
    return base.override({**TINY, **changes})


def write_params(path: Path, **changes) -> None:
    path.write_text(yaml.safe_dump(params_for(**changes).to_dict(), sort_keys=False))


def make_project(root: Path, scene: Path, **changes) -> Path:
    """A project folder: the fetched scene under data/raw and params.yaml with `changes`."""
    shutil.copytree(scene, root / "data" / "raw" / DATASET)
    write_params(root / "params.yaml", **changes)
    return root


def start(ns, argv: list[str], cwd: Path, env=None) -> subprocess.Popen:
    """`argv` in the namespace, in `cwd`, one thread; stdout/stderr piped."""
    return ns.popen(
        argv,
        env={**ONE_THREAD, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_hsi(ns, project: Path, *args: str, env=None) -> subprocess.Popen:
    """`hsi ARGS` in the namespace with cwd = project. The params file is given by its absolute
    path: bench/gpu_session.sh ends its studies with `pkill -f "pipeline.cli --params
    params.yaml study"`, which would SIGTERM this one too when both run on one machine."""
    argv = [PY, "-m", "pipeline.cli", "--params", str(project / "params.yaml"), *args]
    return start(ns, argv, project, env)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Wait for `proc`; kill it on timeout (and fail). (returncode, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[-1]} still running after {timeout} s:\n{err[-4000:]}")
    return proc.returncode, out, err


def hsi(ns, project: Path, *args: str, timeout: float = 240, env=None) -> tuple[int, str, str]:
    return finish(start_hsi(ns, project, *args, env=env), timeout)


def ok(result: tuple[int, str, str]) -> str:
    rc, _, err = result
    assert rc == 0, f"exit {rc}:\n{err[-6000:]}"
    return err


def files_of(project: Path, p, model: str, seed: int, fold: int) -> RunFiles:
    """A cell's files with absolute paths (cell_files gives them relative to the project)."""
    f = cell_files(p, PROTOCOL, model, seed, fold)
    return RunFiles(f.name, project / f.checkpoint, project / f.report, project / f.prediction)


def scores(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    return {k: metrics[k] for k in SCORES}


def snapshot(*folders: Path) -> dict[str, tuple[int, str]]:
    """(mtime_ns, sha256) of every file under `folders`."""
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path)] = (path.stat().st_mtime_ns, digest)
    return out


def fold_data(project: Path, p, fold: int):
    """The prepared data of `fold` as the study makes it on its driver."""
    raw = project / "data" / "raw" / DATASET
    cube, gt, manifest = load_raw(raw, p.dataset.crop)
    return prepare_scene(cube, gt, manifest, p, where=raw, fold=fold)


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def study_runs(mlc) -> tuple[object, list]:
    """The study's run and the cells' runs: top-level rows linked to it by `hsi.study_run_id`."""
    exp = mlc.get_experiment_by_name(EXPERIMENT)
    runs = mlc.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name == PARENT]
    children = [r for r in runs if r.data.tags.get("hsi.study_run_id") == parent.info.run_id]
    assert not any("mlflow.parentRunId" in r.data.tags for r in children), "cells are nested"
    return parent, children


def error_lines(stderr: str) -> list[str]:
    """The lines `hsi` itself prints (logging lines start with a timestamp)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("hsi study:")]


def cell_pids(ns) -> list[int]:
    """PIDs in the namespace of Ray workers running a study cell (title `ray::cell:<key>`)."""
    pids = []
    for pid in ns.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::cell:"):
            pids.append(pid)
    return pids


def wait_for(what: str, check, proc: subprocess.Popen, timeout: float, every: float = 0.2):
    """Poll `check()` until it returns something truthy; fail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"hsi study exited ({proc.returncode}) before {what}:\n{err[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(every)


# --- 1. a cell is `prepare` + `train` + `evaluate`; finished cells are skipped -----------

STAGES = """
import json, shutil, sys
from pathlib import Path

import torch

from pipeline import cli

folds, models, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
threads = [torch.get_num_threads()]
rep = Path("reports/indian_pines")
for k in folds:
    params = f"params.fold{k}.yaml"
    assert cli.main(["--params", params, "prepare"]) == 0, ("prepare", k)
    for m in models:
        for stage in ("train", "evaluate"):
            assert cli.main(["--params", params, stage, "--model", m, "--seed", "0"]) == 0, (m, k)
        threads.append(torch.get_num_threads())
        cell = out / f"{m}-seed0-fold{k}"
        cell.mkdir(parents=True)
        for name in ("metrics.json", "train.json"):
            shutil.copy(rep / f"{m}-seed0" / name, cell / name)
        shutil.copy(rep / "predictions" / f"{m}-seed0.npy", cell / "prediction.npy")
(out / "threads.json").write_text(json.dumps(threads))
"""


@pytest.mark.integration
def test_study_cells_equal_train_and_evaluate(ns, scene, tmp_path):
    """A study cell is exactly `hsi prepare` (that fold) + `hsi train` + `hsi evaluate`; a re-run
    skips the finished cells and leaves their files untouched."""
    models, folds = ["hybridsn_2d3d", "svm"], [0, 1]
    project = make_project(tmp_path / "project", scene, **{"study.models": models})
    p = params_for(**{"study.models": models})
    err = ok(hsi(ns, project, "study"))
    assert f"study {PROTOCOL}: 4 cells, 4 to run (0 finished)" in err, err[-3000:]

    cells = [(m, k) for m in models for k in folds]
    study = project / "reports" / DATASET / "study" / PROTOCOL
    before = snapshot(study / "cells", study / "predictions", study / "models")
    assert len(before) > 4 * 8, sorted(before)

    # the same cells as a user runs them: one params file per fold, one torch thread
    for k in folds:
        write_params(project / f"params.fold{k}.yaml", **{"split.fold": k})
    by_hand = tmp_path / "by_hand"
    argv = [PY, "-c", STAGES, json.dumps(folds), json.dumps(models), str(by_hand)]
    ok(finish(start(ns, argv, project), 400))
    assert json.loads((by_hand / "threads.json").read_text()) == [1] * (1 + len(cells)), (
        "OMP_NUM_THREADS=1 not honoured by the stages"
    )
    for m, k in cells:
        files = files_of(project, p, m, 0, k)
        hand = by_hand / f"{m}-seed0-fold{k}"
        assert scores(files.metrics_json) == scores(hand / "metrics.json"), (m, k)
        assert np.array_equal(np.load(files.prediction), np.load(hand / "prediction.npy")), (m, k)
        cell_train = json.loads(files.train_json.read_text())
        hand_train = json.loads((hand / "train.json").read_text())
        for key in ("data_fingerprint", "params_fingerprint", "best_epoch", "best_val_oa"):
            assert cell_train[key] == hand_train[key], (m, k, key)
        assert cell_train["attempts"] == 1 and cell_train["node_id"]

    err = ok(hsi(ns, project, "study"))
    assert f"study {PROTOCOL}: 4 cells, 0 to run (4 finished)" in err, err[-3000:]
    assert snapshot(study / "cells", study / "predictions", study / "models") == before

    # the serial engine gives the same summary (scores, per-class accuracy, verdicts)
    serial = make_project(tmp_path / "serial", scene, **{"study.models": models,
                                                          "study.engine": "serial"})  # fmt: skip
    ok(hsi(ns, serial, "study"))

    def comparable(folder):
        s = json.loads(
            (folder / "reports" / DATASET / "study" / PROTOCOL / "summary.json").read_text()
        )
        keep = ("oa", "aa", "kappa", "fold_oa", "class_accuracy", "best_epoch", "epochs_run")
        models = {m: {k: r[k] for k in keep} for m, r in s["models"].items()}
        verdicts = {b: {m: (c["verdict"], c["oa_difference"]) for m, c in by.items()}
                    for b, by in s["comparisons"].items()}  # fmt: skip
        return models, verdicts

    assert comparable(project) == comparable(serial)


# --- 2. two nodes, one MLflow server; a local store is refused ---------------------------

HEALTHY = """
import sys, time, urllib.request
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
"""


@pytest.mark.integration
def test_study_over_two_nodes_logs_cells_on_both_and_refuses_sqlite(ns, scene, tmp_path):
    """Cells of one study run on both nodes of a cluster and log, as children of the study's
    run, to one MLflow server; Ray listens on loopback only; a SQLite store is refused there."""
    port, url = 6380, "http://127.0.0.1:5000"
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    with open(tmp_path / "server" / "server.log", "w") as log:
        server = ns.popen(
            [MLFLOW, "server", "--host", "127.0.0.1", "--port", "5000", "--workers", "1",
             "--backend-store-uri", f"sqlite:///{db}",
             "--artifacts-destination", str(tmp_path / "server" / "artifacts")],
            env={"MLFLOW_DISABLE_TELEMETRY": "true"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    for node in (
        ["--head", f"--port={port}", "--include-dashboard=false"],
        [f"--address=127.0.0.1:{port}"],
    ):
        started = ns.run([RAY, "start", *node, *common], timeout=120)
        assert started.returncode == 0, started.stderr[-3000:]
    healthy = ns.python(HEALTHY, url, "120", timeout=150)
    assert healthy.returncode == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
    assert server.poll() is None

    cluster = {"study.address": f"127.0.0.1:{port}", "tracking.enabled": True}
    grid = {"study.models": ["hybridsn_2d3d"], "study.seeds": [0, 1], "study.folds": [0, 1]}
    project = make_project(tmp_path / "project", scene, **grid, **cluster, **{"tracking.uri": url})
    study = start_hsi(ns, project, "study")
    during, deadline = [], time.monotonic() + 300
    while study.poll() is None and time.monotonic() < deadline:  # Ray's sockets as cells run
        during += netns.ray_listeners(ns)
        time.sleep(1.0)
    err = ok(finish(study, 10))
    assert "study leakfree: 4 cells, 4 to run (0 finished)" in err, err[-3000:]

    parent, children = study_runs(client(f"sqlite:///{db}"))
    assert parent.info.status == "FINISHED"
    p = params_for(**grid)
    cells = {}
    for s in (0, 1):
        for k in (0, 1):
            files = files_of(project, p, "hybridsn_2d3d", s, k)
            cells[files.name] = json.loads(files.train_json.read_text())
    assert sorted(r.info.run_name for r in children) == sorted(cells)
    node_ids = {r.data.tags["node_id"] for r in children}
    assert len(node_ids) == 2, f"cells did not run on both nodes: {node_ids}"
    for r in children:
        train = cells[r.info.run_name]
        assert r.info.status == "FINISHED"
        assert (
            r.data.tags["node_id"] == train["node_id"] and train["mlflow_run_id"] == r.info.run_id
        )
        assert r.data.tags["node_ip"] == "127.0.0.1" and r.data.tags["protocol"] == PROTOCOL
        assert (r.data.tags["model"], r.data.tags["seed"], r.data.tags["fold"]) == (
            train["model"], str(train["seed"]), str(train["fold"])
        )  # fmt: skip

    after = netns.ray_listeners(ns)
    assert {"gcs_server", "raylet"} <= {ln.process for ln in after}
    assert any(ln.process not in ("gcs_server", "raylet") for ln in during), during
    not_loopback = [ln for ln in during + after + ns.listeners() if not ln.loopback]
    assert not not_loopback, f"listening beyond loopback: {not_loopback}"

    local = make_project(
        tmp_path / "local", scene, **grid, **cluster,
        **{"tracking.uri": f"sqlite:///{tmp_path / 'local' / 'mlflow.db'}"},
    )  # fmt: skip
    rc, _, err = hsi(ns, local, "study")
    assert rc == 2, err[-3000:]
    (line,) = error_lines(err)
    assert line.startswith("hsi study: error: 'tracking.uri'") and "mlflow server" in line, line
    assert "Traceback" not in err, err[-3000:]
    assert not (local / "reports" / DATASET / "study" / PROTOCOL / "cells").exists()


# --- 3. kill -9 of a cell's worker --------------------------------------------------------


def cell_run(mlc, name: str):
    """The MLflow run named `name`, or None while there is none."""
    exp = mlc.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = mlc.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return runs[0] if runs else None


def history(path: Path) -> list[dict]:
    """history.csv without its timing column."""
    lines = path.read_text().splitlines()
    keys = lines[0].split(",")
    return [
        {k: v for k, v in zip(keys, ln.split(","), strict=True) if k != "time_s"}
        for ln in lines[1:]
    ]


@pytest.mark.integration
def test_killed_cell_worker_is_retried_and_resumes_to_the_same_metrics(ns, scene, tmp_path):
    """SIGKILL of the Ray worker running a cell mid-training: the cell is retried, resumes from
    its last epoch and ends with exactly the metrics of an uninterrupted run."""
    from pipeline.tracking import prepare_store

    name = "hybridsn-seed0-fold0"
    cell = {"study.models": ["hybridsn"], "study.folds": [0], "train.epochs": 8}
    uri = f"sqlite:///{tmp_path / 'victim' / 'mlflow.db'}"
    projects = {
        "victim": make_project(
            tmp_path / "victim", scene, **cell, **{"tracking.enabled": True, "tracking.uri": uri}
        ),
        # the same cell uninterrupted, in this process; tracking off: a serial study with
        # tracking on fails ("Run ... is already active"), and logging changes no weight
        "control": make_project(tmp_path / "control", scene, **cell, **{"study.engine": "serial"}),
    }
    prepare_store(uri)  # created here first: this process reads it while the study writes
    procs = {which: start_hsi(ns, root, "study") for which, root in projects.items()}
    victim = procs["victim"]
    mlc = client(f"sqlite:///{projects['victim'] / 'mlflow.db'}")

    def two_epochs_logged():
        run = cell_run(mlc, name)
        return run and len(mlc.get_metric_history(run.info.run_id, "val_oa")) >= 2 and run

    run = wait_for("two logged epochs", two_epochs_logged, victim, timeout=240)
    (worker,) = wait_for("the cell's worker", lambda: cell_pids(ns), victim, timeout=10)
    assert Path(f"/proc/{worker}/cmdline").read_bytes().startswith(f"ray::cell:{name}".encode())
    os.kill(worker, signal.SIGKILL)
    err = ok(finish(victim, 300))
    ok(finish(procs["control"], 300))

    p = params_for(**cell)
    got, want = (files_of(projects[w], p, "hybridsn", 0, 0) for w in ("victim", "control"))
    train = json.loads(got.train_json.read_text())
    assert train["attempts"] >= 2, err[-3000:]
    resumed = train["resumed_from_epoch"]
    assert resumed is not None and 2 <= resumed < 8, f"did not resume mid-training: {train}"
    assert train["mlflow_run_id"] == run.info.run_id
    assert mlc.get_run(run.info.run_id).info.status == "FINISHED"
    assert scores(got.metrics_json) == scores(want.metrics_json)
    assert np.array_equal(np.load(got.prediction), np.load(want.prediction))
    assert history(got.report / "history.csv") == history(want.report / "history.csv")
    control = json.loads(want.train_json.read_text())
    assert control["attempts"] == 1
    for key in ("best_epoch", "best_val_oa", "epochs_run"):
        assert train[key] == control[key], key


# --- 4. Ctrl-C -------------------------------------------------------------------------


@pytest.mark.integration
def test_ctrl_c_stops_the_study_and_keeps_finished_cells(ns, scene, tmp_path):
    """SIGINT to `hsi study` while a cell trains: exit 130 with one line, the finished cells'
    files complete and their runs FINISHED, the study's run KILLED."""
    from pipeline.tracking import prepare_store

    models, folds = ["svm", "hybridsn"], [0, 1]
    uri = f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    grid = {"study.models": models, "study.folds": folds, "train.epochs": 80,
            "tracking.enabled": True, "tracking.uri": uri}  # fmt: skip
    project = make_project(tmp_path / "project", scene, **grid)
    p = params_for(**grid)
    prepare_store(uri)
    mlc = client(uri)
    names = {f"{m}-seed0-fold{k}": (m, k) for m in models for k in folds}

    def done(name: str) -> bool:
        m, k = names[name]
        return (files_of(project, p, m, 0, k).report / "classification_report.json").exists()

    def training_unfinished():
        """A finished cell, and a cell whose run has logged an epoch and whose files are not."""
        finished = [n for n in names if done(n)]
        if not finished:
            return None
        for n in names:
            run = cell_run(mlc, n)
            if run and not done(n) and mlc.get_metric_history(run.info.run_id, "val_oa"):
                return finished
        return None

    study = start_hsi(ns, project, "study")
    wait_for("a finished cell and one mid-training", training_unfinished, study, timeout=300)
    os.kill(study.pid, signal.SIGINT)
    rc, _, err = finish(study, 120)
    assert rc == 130, err[-3000:]
    (line,) = error_lines(err)
    assert line.startswith("hsi study: interrupted; "), line
    assert "Traceback" not in err, err[-3000:]

    finished = [n for n in names if done(n)]
    assert 1 <= len(finished) < len(names)
    for n in finished:
        m, k = names[n]
        cell = evaluated_cell(files_of(project, p, m, 0, k), fold_data(project, p, k), m, 0, k, "x")
        assert cell.metrics["n_test"] > 0

    parent, children = study_runs(mlc)
    assert parent.info.status == "KILLED"
    status = {r.info.run_name: r.info.status for r in children}
    assert status, "no cell logged a run"
    assert all(status.get(n) == "FINISHED" for n in finished), status
    interrupted = {n: s for n, s in status.items() if n not in finished}
    assert interrupted, status
    assert all(s == "KILLED" for s in interrupted.values()), status


def test_failed_cells_are_one_line_and_the_finished_ones_are_kept(
    scene, tmp_path, monkeypatch, capsys, caplog
):
    """Serial engine, no Ray: one cell raising gives exit 2 with one line; the others' files stay
    complete, and the next run only runs the failed cell."""
    from pipeline import cli
    from pipeline.stages import study

    root = make_project(tmp_path / "p", scene, **{"study.engine": "serial", "study.models": ["rf"]})
    monkeypatch.chdir(root)
    real = study._cell

    def fold1_breaks(payload, shared, ctx):
        if payload["fold"] == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(payload, shared, ctx)

    monkeypatch.setattr(study, "_cell", fold1_breaks)
    assert cli.main(["--params", "params.yaml", "study"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hsi study:")]
    assert lines == [
        "hsi study: error: 1 of 2 cells failed (first: rf-seed0-fold1: RuntimeError: CUDA error: "
        "an illegal memory access was encountered); the 1 finished are kept, and `hsi study` "
        "again runs only the others"
    ]
    files = cell_files(params_for(), PROTOCOL, "rf", 0, 0)
    assert (
        files.metrics_json.is_file()
        and not cell_files(params_for(), PROTOCOL, "rf", 0, 1).metrics_json.exists()
    )
    monkeypatch.setattr(study, "_cell", real)
    before = files.metrics_json.stat().st_mtime_ns
    caplog.set_level("INFO", logger="pipeline.stages.study")
    assert cli.main(["--params", "params.yaml", "study"]) == 0
    assert "2 cells, 1 to run (1 finished)" in caplog.text
    assert files.metrics_json.stat().st_mtime_ns == before


def test_serial_study_with_tracking_logs_each_cell_as_a_linked_top_level_run(
    scene, tmp_path, monkeypatch
):
    """No Ray: the cells' runs open while the study's run is active in the same process."""
    from pipeline import cli

    db = tmp_path / "mlflow.db"
    changes = {
        "study.engine": "serial",
        "study.models": ["rf"],
        "tracking.enabled": True,
        "tracking.uri": f"sqlite:///{db}",
    }
    root = make_project(tmp_path / "p", scene, **changes)
    monkeypatch.chdir(root)
    assert cli.main(["--params", "params.yaml", "study"]) == 0
    parent, children = study_runs(client(f"sqlite:///{db}"))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("hsi.role") == "study"
    assert sorted(r.info.run_name for r in children) == ["rf-seed0-fold0", "rf-seed0-fold1"]
    assert all(r.info.status == "FINISHED" and "test_oa" in r.data.metrics for r in children)
    assert sorted(r.data.params["fold"] for r in children) == ["0", "1"]
