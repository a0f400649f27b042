"""File-system faults a user met (2026-11-30): each gets one line naming the file and the problem,
the previous valid outputs stay as they were, and no temp file is left.

Real faults where this machine allows them: a full disk is a 64 KiB tmpfs and a read-only folder
a read-only bind mount, both in a private mount namespace (``unshare -m``, needs root; chmod does
not stop root); those tests are skipped elsewhere. The same guards are also tested with
simulated faults (monkeypatched writes raising ``OSError(errno.ENOSPC)`` and the like), which
always run. Each test was checked to fail with its guard removed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from prepared import write_prepared

from pipeline import cli
from pipeline import io as pio
from pipeline.data.download import copy_verified, verify_file
from pipeline.data.fetching import fetch_dataset, load_raw
from pipeline.data.loaders import load_cube, resolve_key
from pipeline.errors import ChecksumError, DataError
from pipeline.io import OutputError, sha256_file, write_json
from pipeline.models import build_model
from pipeline.params import validate
from pipeline.provenance import prepared_fingerprint
from pipeline.training.checkpoint import load_checkpoint, load_state, save_checkpoint, save_state

ROOT = Path(__file__).resolve().parents[1]
K, P, C = 16, 11, 3
REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EDQUOT: "disk quota exceeded",
}


@functools.cache
def _private_mounts() -> bool:
    """Whether a private mount namespace with its own mounts can be made here."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        cmd = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {d}"]
        return subprocess.run(cmd, capture_output=True).returncode == 0


real_mounts = pytest.mark.skipif(
    not _private_mounts(), reason="needs `unshare -m` and mount (root); simulated tests cover it"
)


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PY": sys.executable,
        "MPLBACKEND": "Agg",
        "TQDM_DISABLE": "1",
    }


def _in_private_mounts(script: str, cwd: Path) -> None:
    """Run ``script`` (sh) in a mount namespace of its own: its mounts vanish when it ends."""
    subprocess.run(
        ["unshare", "-m", "sh", "-c", "set -e\n" + script],
        cwd=cwd,
        env=_env(),
        check=True,
        timeout=600,
    )


def _hsi(*args: str) -> str:
    """Shell lines running `hsi ARGS`: stderr to err.txt, exit code to rc.txt."""
    return f'rc=0; "$PY" -m pipeline.cli --params params.yaml {" ".join(args)} 2>err.txt || rc=$?\necho $rc > rc.txt\n'


def _one_line_error(err: str, stage: str) -> str:
    """The error line of a CLI run's stderr (log lines come before it); no traceback."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"hsi {stage}: error: "), err
    return line


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or ".fetching-" in p.name]


# --------------------------------------------------------------------------- a small project


def _scene():
    rng = np.random.default_rng(0)
    cube = rng.normal(size=(12, 12, K)).astype(np.float32)
    labels = rng.integers(0, C + 1, size=(12, 12)).astype(np.int64)
    labels[0, :C] = np.arange(1, C + 1)
    test = labels > 0
    split = {"train": test & False, "val": test & False, "test": test, "guard": test & False}
    pca = {"mean": np.zeros(K), "components": np.eye(K), "whiten": np.array(False)}
    return cube, labels, split, pca


def _params_file(root: Path, custom: dict, **dataset) -> Path:
    p = validate(
        {
            "dataset": {"name": "custom", "custom": custom, **dataset},
            "compute": {"device": "cpu"},
            "patch": {"size": P},
            "tracking": {"enabled": False},
        }
    )
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(p.to_dict()))
    return path


def _project(root: Path, **dataset) -> dict:
    """A user's folder after `fetch`, `prepare`, `train` and `evaluate` of a 12×12 custom scene:
    the user's files in ``mine/``, then data/raw, data/prepared, models and reports."""
    cube, labels, split, pca = _scene()
    mine = root / "mine"
    mine.mkdir()
    np.save(mine / "cube.npy", cube)
    np.save(mine / "gt.npy", labels.astype(np.uint8))
    custom = {"cube": str(mine / "cube.npy"), "gt": str(mine / "gt.npy")}
    _params_file(root, custom, **dataset)
    fetch_dataset("custom", root / "data" / "raw" / "custom", custom=custom)
    write_prepared(root, "custom", cube, labels, split, pca)
    torch.manual_seed(0)
    model = build_model("hybridsn", K, P, C, dropout=0.4)
    save_checkpoint(
        root / "models" / "custom" / "hybridsn-seed0.pt",
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
        meta={"dataset": "custom"},
        data_fingerprint=prepared_fingerprint(cube, labels, split, pca),
        params={"seed": 0},
    )
    run = root / "reports" / "custom" / "hybridsn-seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"oa": 0.5}\n')  # the previous evaluation's
    return {"custom": custom, "cube": cube, "labels": labels, "run": run}


EVALUATE = ("evaluate", "--model", "hybridsn", "--seed", "0")


# --------------------------------------------------------------------------- 1. disk full, read-only


@real_mounts
def test_evaluate_on_a_full_disk_is_one_line_and_keeps_the_previous_metrics(tmp_path):
    _project(tmp_path)
    shutil.move(tmp_path / "reports", tmp_path / "seed")
    (tmp_path / "reports").mkdir()
    _in_private_mounts(
        "mount -t tmpfs -o size=64k tmpfs reports\n"
        "cp -a seed/. reports/\n"
        "dd if=/dev/zero of=reports/filler bs=4096 2>/dev/null || true\n"
        + _hsi(*EVALUATE)
        + "cp -a reports/custom after\n",
        tmp_path,
    )
    line = _one_line_error((tmp_path / "err.txt").read_text(), "evaluate")
    assert (tmp_path / "rc.txt").read_text().strip() == "2"
    assert line.startswith(
        "hsi evaluate: error: reports/custom/predictions/hybridsn-seed0.npy: cannot write: "
        "no space left on device"
    )
    after = tmp_path / "after" / "hybridsn-seed0"
    assert sorted(p.name for p in after.iterdir()) == ["metrics.json"]  # no temp file
    assert (after / "metrics.json").read_text() == '{"oa": 0.5}\n'


@real_mounts
def test_resume_state_save_on_a_full_disk_keeps_the_previous_state(tmp_path):
    # torch.save reports a full disk as RuntimeError("... unexpected pos ..."), without an errno
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import json, sys, torch\n"
        "from pipeline.io import OutputError\n"
        "from pipeline.training.checkpoint import load_state, save_state\n"
        "path = 'models/.resume/m.pt'\n"
        "if sys.argv[1] == 'first':\n"
        "    save_state(path, {'epoch': 1}, fingerprint='fp')\n"
        "    sys.exit()\n"
        "try:\n"
        "    save_state(path, {'epoch': 2, 'w': torch.zeros(50000)}, fingerprint='fp')\n"
        "    msg = None\n"
        "except OutputError as e:\n"
        "    msg = str(e)\n"
        "import os\n"
        "json.dump({'msg': msg, 'epoch': load_state(path, fingerprint='fp')['epoch'],\n"
        "           'files': sorted(os.listdir('models/.resume'))}, open('out.json', 'w'))\n"
    )
    (tmp_path / "models").mkdir()
    _in_private_mounts(
        "mount -t tmpfs -o size=64k tmpfs models\n"
        '"$PY" driver.py first\n'
        "dd if=/dev/zero of=models/filler bs=4096 2>/dev/null || true\n"
        '"$PY" driver.py second\n',
        tmp_path,
    )
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["msg"].startswith("models/.resume/m.pt: cannot write: no space left on device")
    assert out["epoch"] == 1 and out["files"] == ["m.pt"]


@real_mounts
def test_fetch_into_a_read_only_data_raw_is_one_line_and_keeps_the_folder(tmp_path):
    _project(tmp_path)
    raw = tmp_path / "data" / "raw"
    before = _snapshot(raw)
    _in_private_mounts(
        "mount --bind data/raw data/raw\nmount -o remount,bind,ro data/raw\n" + _hsi("fetch"),
        tmp_path,
    )
    line = _one_line_error((tmp_path / "err.txt").read_text(), "fetch")
    assert (tmp_path / "rc.txt").read_text().strip() == "2"
    assert line.startswith("hsi fetch: error: data/raw/custom: cannot write: read-only file system")
    assert _snapshot(raw) == before and not _temps(raw)


@real_mounts
def test_prepare_and_evaluate_into_read_only_folders_are_one_line(tmp_path):
    # prepare's first write is a stage's own unlink of meta.json: the CLI turns it into one line
    _project(tmp_path)
    (tmp_path / "reports" / "custom" / "hybridsn-seed0" / "classification_report.json").write_text(
        "{}"
    )
    before = {d: _snapshot(tmp_path / d) for d in ("data", "reports")}
    _in_private_mounts(
        "for d in data/prepared reports; do mount --bind $d $d; mount -o remount,bind,ro $d; done\n"
        + _hsi("prepare")
        + "mv err.txt prepare.txt; mv rc.txt prepare.rc\n"
        + _hsi(*EVALUATE),
        tmp_path,
    )
    line = _one_line_error((tmp_path / "prepare.txt").read_text(), "prepare")
    assert (tmp_path / "prepare.rc").read_text().strip() == "2"
    assert line.startswith(
        "hsi prepare: error: data/prepared/custom/cube.npy: cannot write: read-only file system"
    )
    line = _one_line_error((tmp_path / "err.txt").read_text(), "evaluate")
    assert (tmp_path / "rc.txt").read_text().strip() == "2"
    assert "reports/custom/" in line and "read-only file system" in line
    assert {d: _snapshot(tmp_path / d) for d in ("data", "reports")} == before


@pytest.mark.parametrize("err", sorted(REASONS), ids=errno.errorcode.get)
@pytest.mark.parametrize("where", ["write", "create", "rename"])
def test_output_write_errors_are_one_line_simulated(tmp_path, monkeypatch, err, where):
    target = tmp_path / "reports" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old")
    fault = OSError(err, os.strerror(err))
    if where == "write":

        def half_then_fail(self, text):
            with open(self, "w") as f:
                f.write(text[:3])
            raise fault

        monkeypatch.setattr(Path, "write_text", half_then_fail)
    elif where == "create":
        monkeypatch.setattr(
            tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(OSError(err, "x", kw["dir"]))
        )
    else:
        monkeypatch.setattr(
            os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(err, "x", str(a), str(b)))
        )
    with pytest.raises(OutputError) as e:
        write_json(target, {"oa": 0.9})
    msg = str(e.value)
    assert msg.startswith(f"{target}: cannot write: {REASONS[err]}") and "\n" not in msg
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(target.parent) == ["metrics.json"]


def test_state_save_failing_on_a_full_disk_simulated(tmp_path, monkeypatch):
    path = tmp_path / ".resume" / "m.pt"
    save_state(path, {"epoch": 1}, fingerprint="fp")

    def torch_save_on_full_disk(obj, f):
        Path(f).write_bytes(b"PK\x03\x04half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", torch_save_on_full_disk)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: not a disk fault
        save_state(path, {"epoch": 2}, fingerprint="fp")
    full = os.statvfs(tmp_path)
    fields = {"f_flag": 0, "f_bavail": 0, "f_frsize": full.f_frsize}
    monkeypatch.setattr(os, "statvfs", lambda p: type("S", (), fields)())
    with pytest.raises(OutputError, match=rf"^{path}: cannot write: no space left on device"):
        save_state(path, {"epoch": 2}, fingerprint="fp")
    monkeypatch.undo()
    assert load_state(path, fingerprint="fp")["epoch"] == 1
    assert os.listdir(path.parent) == ["m.pt"]


# --------------------------------------------------------------------------- 2. kill -9 mid-write


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_write(
    tmp_path, monkeypatch, capsys, one_thread
):
    p = _project(tmp_path)
    target = p["run"] / "metrics.json"
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\nfrom pipeline.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n",
            str(target),
        ],
        env=_env(),
    )
    assert killed.wait(timeout=120) == -signal.SIGKILL
    left = [n for n in os.listdir(p["run"]) if n != "metrics.json"]
    assert len(left) == 1 and left[0].startswith(f".metrics.json.{killed.pid}.")
    assert left[0].endswith(".tmp.json")
    live = p["run"] / f".confusion.csv.{os.getpid()}.abcdefgh.tmp.csv"  # a writer still at work
    live.write_text("partial")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--params", "params.yaml", *EVALUATE]) == 0, capsys.readouterr().err
    names = os.listdir(p["run"])
    assert left[0] not in names and live.name in names
    assert json.loads(target.read_text())["oa"] >= 0


# --------------------------------------------------------------------------- 3. FIFOs, devices


@pytest.fixture
def fifo(tmp_path):
    """A FIFO; without the guard a reader would wait forever, so a writer comes by now and then
    (the test then fails on its message instead of hanging)."""
    path = tmp_path / "fifo" / "cube.npy"
    path.parent.mkdir()
    os.mkfifo(path)
    stop = threading.Event()

    def unblock():
        while not stop.wait(2):
            with contextlib.suppress(OSError):  # ENXIO while no reader waits
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()


@pytest.fixture
def not_regular(request, fifo, tmp_path):
    """``(path, kind)`` of a FIFO, a character device, a directory or a socket."""
    if request.param == "FIFO":
        yield fifo, "a FIFO"
    elif request.param == "device":
        yield Path("/dev/null"), "a character device"
    elif request.param == "directory":
        (tmp_path / "d.npy").mkdir()
        yield tmp_path / "d.npy", "a directory"
    else:
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(f"{d}/s.npy")
            yield Path(d) / "s.npy", "a socket"
            sock.close()


@pytest.mark.parametrize("not_regular", ["FIFO", "device", "directory", "socket"], indirect=True)
@pytest.mark.parametrize(
    "reader",
    [
        lambda src, dest: load_cube(src),
        lambda src, dest: resolve_key(src),
        lambda src, dest: copy_verified(src, dest),
        lambda src, dest: verify_file(src),
    ],
    ids=["load_cube", "resolve_key", "copy_verified", "verify_file"],
)
def test_inputs_that_are_not_regular_files_are_refused_before_opening(
    tmp_path, not_regular, reader
):
    src, kind = not_regular
    with pytest.raises(DataError) as e:
        reader(src, tmp_path / "copy.npy")
    assert str(e.value).startswith(f"{src}: not a regular file ({kind})")
    assert not (tmp_path / "copy.npy").exists()


def test_a_fifo_given_as_dataset_custom_cube_is_refused_by_fetch(tmp_path, fifo):
    p = _project(tmp_path)
    raw = tmp_path / "data" / "raw"
    before = _snapshot(raw)
    _params_file(tmp_path, {**p["custom"], "cube": str(fifo)})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "--params", "params.yaml", "fetch"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("hsi fetch blocked on a FIFO")
    line = _one_line_error(proc.stderr, "fetch")
    assert proc.returncode == 2
    assert (
        line == f"hsi fetch: error: {fifo}: not a regular file (a FIFO); give the data file itself"
    )
    assert _snapshot(raw) == before and not _temps(raw)


def test_a_fifo_in_the_local_data_folder_stops_the_fetch(tmp_path, fifo):
    local = fifo.parent
    os.rename(fifo, local / "Indian_pines_corrected.npy")
    with pytest.raises(DataError) as e:
        fetch_dataset(
            "indian_pines", tmp_path / "raw" / "indian_pines", source="local", data_dir=local
        )
    msg = str(e.value)
    assert msg.startswith(f"{local / 'Indian_pines_corrected.npy'}: not a regular file (a FIFO)")
    assert "no other source is tried" in msg and "\n" not in msg
    assert os.listdir(tmp_path / "raw") == []


# --------------------------------------------------------------------------- 4. umask


def test_fetched_folder_and_files_follow_the_umask(tmp_path, monkeypatch):
    cube, labels, _, _ = _scene()
    np.save(tmp_path / "cube.npy", cube)
    np.save(tmp_path / "gt.npy", labels.astype(np.uint8))
    custom = {"cube": str(tmp_path / "cube.npy"), "gt": str(tmp_path / "gt.npy")}
    monkeypatch.setattr(pio, "_UMASK", 0o022)
    old = os.umask(0o022)
    try:
        out = tmp_path / "data" / "raw" / "custom"
        fetch_dataset("custom", out, custom=custom)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755  # others on a shared machine can read it
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "cube.npy": 0o644,
        "gt.npy": 0o644,
        "manifest.json": 0o644,
    }


# --------------------------------------------------------------------------- 5. the user's paths


def test_errors_about_custom_data_name_the_users_file(tmp_path):
    cube, labels, _, _ = _scene()
    mine = tmp_path / "mine"
    mine.mkdir()
    np.save(mine / "gt.npy", labels.astype(np.uint8))
    custom = {"cube": str(mine / "cube.npy"), "gt": str(mine / "gt.npy")}
    out = tmp_path / "data" / "raw" / "custom"
    np.save(mine / "cube.npy", cube)
    (mine / "cube.npy").write_bytes((mine / "cube.npy").read_bytes()[:300])  # truncated
    nan = cube.copy()
    nan[1, 2, 3] = np.nan
    for write in (lambda: None, lambda: np.save(mine / "cube.npy", nan)):
        write()
        with pytest.raises(DataError) as e:
            fetch_dataset("custom", out, custom=custom)
        msg = str(e.value)
        assert msg.startswith(f"{mine / 'cube.npy'}: "), msg
        assert ".fetching-" not in msg and "data/raw" not in msg
    assert not out.exists() and os.listdir(out.parent) == []


# --------------------------------------------------------------------------- 6. crop


@pytest.mark.parametrize("crop", [[0, 1000, 0, 1000], [0, 13, 0, 5], [2, 6, 3, 20]])
def test_crop_beyond_the_scene_is_refused_naming_key_shape_and_file(
    tmp_path, monkeypatch, capsys, crop
):
    p = _project(tmp_path)
    _params_file(tmp_path, p["custom"], crop=crop)
    prepared = tmp_path / "data" / "prepared" / "custom"
    before = _snapshot(prepared)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--params", "params.yaml", "prepare"]) == 2
    line = _one_line_error(capsys.readouterr().err, "prepare")
    assert line.startswith(
        f"hsi prepare: error: 'dataset.crop' = {crop} reaches beyond the 12×12 scene "
        "(data/raw/custom/cube.npy)"
    )
    assert _snapshot(prepared) == before and not _temps(tmp_path / "data")


# --------------------------------------------------------------------------- 7. code in pickles


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, form: str, marker: Path) -> None:
    payload = {"state_dict": {}, "x": _System(marker)}
    if form == "zip":
        torch.save(payload, path)
    elif form == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(form[-1])))


@pytest.mark.parametrize("form", ["zip", "legacy", "pickle0", "pickle2", "pickle4"])
def test_checkpoint_whose_pickle_calls_os_system_is_refused(tmp_path, form):
    bad, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _evil(bad, form, marker)
    with warnings.catch_warnings(record=True) as seen, pytest.raises(DataError) as e:
        warnings.simplefilter("always")
        load_checkpoint(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: refused: holds Python objects other than tensors") and (
        "posix.system" in msg or "nt.system" in msg
    )
    assert "\n" not in msg and "weights_only" not in msg and not seen
    assert not marker.exists()
    cut = tmp_path / "cut.pt"  # a checkpoint cut short is still called corrupt
    cut.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2] if form == "zip" else b"\x80\x02")
    with pytest.raises(DataError, match=r"cut\.pt: not a readable classifier checkpoint"):
        load_checkpoint(cut)


def test_predict_with_a_code_carrying_checkpoint_is_one_line(tmp_path, capsys):
    bad, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _evil(bad, "zip", marker)
    np.save(tmp_path / "scene.npy", _scene()[0])
    code = cli.main(["predict", "--checkpoint", str(bad), "--cube", str(tmp_path / "scene.npy")])
    line = _one_line_error(capsys.readouterr().err, "predict")
    assert code == 2 and f"{bad}: refused: holds Python objects" in line
    assert not marker.exists() and sorted(os.listdir(tmp_path)) == ["evil.pt", "scene.npy"]


# --------------------------------------------------------------------------- 8. raw files edited


def test_raw_cube_edited_after_fetch_is_refused_by_the_next_stage(tmp_path, monkeypatch, capsys):
    p = _project(tmp_path)
    raw = tmp_path / "data" / "raw" / "custom"
    recorded = json.loads((raw / "manifest.json").read_text())["cube"]["sha256"]
    np.save(raw / "cube.npy", p["cube"][:6])  # the cube halved in place
    actual = sha256_file(raw / "cube.npy")
    prepared = tmp_path / "data" / "prepared" / "custom"
    before = _snapshot(prepared)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--params", "params.yaml", "prepare"]) == 2
    line = _one_line_error(capsys.readouterr().err, "prepare")
    assert line.startswith(
        "hsi prepare: error: data/raw/custom/cube.npy: changed since it was fetched"
    )
    assert actual in line and recorded in line and "`hsi fetch`" in line and "dvc repro" in line
    assert _snapshot(prepared) == before


def test_a_changed_raw_file_is_caught_even_with_its_size_and_mtime_kept(tmp_path):
    cube, labels, _, _ = _scene()
    np.save(tmp_path / "cube.npy", cube)
    np.save(tmp_path / "gt.npy", labels.astype(np.uint8))
    out = tmp_path / "raw"
    fetch_dataset(
        "custom", out, custom={"cube": str(tmp_path / "cube.npy"), "gt": str(tmp_path / "gt.npy")}
    )
    load_raw(out)
    f = out / "cube.npy"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ChecksumError, match=r"cube\.npy: changed since it was fetched"):
        load_raw(out)


def test_fetching_the_same_files_again_records_the_same_manifest(tmp_path):
    # a re-run of `fetch`, or a source with another mtime (another machine), records the same
    # manifest: it lies in data/raw, which DVC hashes into the committed dvc.lock
    cube, labels, _, _ = _scene()
    np.save(tmp_path / "cube.npy", cube)
    np.save(tmp_path / "gt.npy", labels.astype(np.uint8))
    custom = {"cube": str(tmp_path / "cube.npy"), "gt": str(tmp_path / "gt.npy")}
    out = tmp_path / "raw"
    first = fetch_dataset("custom", out, custom=custom)
    assert fetch_dataset("custom", out, custom=custom) == first
    os.utime(tmp_path / "cube.npy", ns=(0, 10**18))
    shutil.rmtree(out)
    assert fetch_dataset("custom", out, custom=custom) == first
