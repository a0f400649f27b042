"""Resume: a killed training continues from its last completed epoch and ends as if never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from prepared import prepared_data, train_cfg, write_prepared

from pipeline.models import build_model
from pipeline.params import validate
from pipeline.training.checkpoint import load_checkpoint, load_state, save_state
from pipeline.training.classifier import train_classifier

K, P, C = 14, 11, 3


def _scene(seed=0, h=20, w=18):
    rng = np.random.default_rng(seed)
    labels = np.broadcast_to(1 + (np.arange(w) // 3) % C, (h, w)).astype(np.int64).copy()
    cube = (rng.normal(size=(h, w, K)) + labels[..., None]).astype(np.float32)
    train = rng.random((h, w)) < 0.35
    val = ~train & (rng.random((h, w)) < 0.3)
    test = ~train & ~val
    return cube, labels, train, val, test


@pytest.mark.parametrize("batching", ["tiles", "patches"])
def test_resumed_training_ends_identical(tmp_path, batching):
    cube, labels, train, val, _ = _scene()
    cfg = train_cfg(epochs=4, batching=batching, tile_pixels=30, batch_size=32, schedule="cosine")

    class Store:
        """Keeps every epoch's state in its own file; "dies" after ``stop_after``."""

        def __init__(self, resume=None, stop_after=None):
            self.resume, self.stop_after, self.saved = resume, stop_after, []

        def load(self):
            return self.resume

        def save(self, state):
            save_state(tmp_path / f"epoch{state['epoch']}.pt", state, fingerprint="fp")
            self.saved.append(state["epoch"])
            if self.stop_after is not None and state["epoch"] == self.stop_after:
                raise KeyboardInterrupt  # the process dies right after writing its state

    def fit(resume=None, stop_after=None):
        torch.manual_seed(0)
        model = build_model("hybridsn_dsc", K, P, C, dropout=0.4)
        store = Store(resume, stop_after)
        return train_classifier(
            model, prepared_data(cube, labels, train, val), cfg, seed=2, patch_size=P,
            progress=False, store=store,
        ), store.saved  # fmt: skip

    full, saved = fit()
    assert saved == [1, 2, 3, 4]
    with pytest.raises(KeyboardInterrupt):
        fit(stop_after=2)
    state = load_state(tmp_path / "epoch2.pt", fingerprint="fp")
    resumed, saved = fit(resume=state)
    assert saved == [3, 4] and resumed.resumed_from == 3
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.best_epoch == full.best_epoch
    for key, value in full.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def _write_prepared(root: Path, name: str) -> None:
    cube, labels, train, val, test = _scene()
    split = {"train": train, "val": val, "test": test, "guard": np.zeros_like(train)}
    pca = {"mean": np.zeros(K), "components": np.eye(K), "whiten": np.array(False)}
    write_prepared(root, name, cube, labels, split, pca)


def _hsi(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "--params", "params.yaml", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, **kw)


def _kill_resume_and_run_whole(runs: dict, args: tuple, state_file: Path, epochs: int) -> int:
    """`hsi ARGS` in runs["killed"] killed with -9 once an epoch's resume state is on disk, then
    run again to its end; `hsi ARGS` in runs["whole"] never killed. Returns the killed epoch."""
    proc = _hsi(runs["killed"], *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.exists() and _epoch(state_file) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _epoch(state_file)
    assert 1 <= killed_at < epochs

    again = _hsi(runs["killed"], *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert f"resuming from epoch {killed_at + 1}" in out
    assert not state_file.exists()  # cleared once the checkpoint is written
    whole = _hsi(runs["whole"], *args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    assert whole.wait(timeout=300) == 0
    return killed_at


@pytest.mark.integration
def test_train_stage_resumes_after_kill_9(tmp_path):
    """kill -9 mid-training; the same command resumes and ends with the uninterrupted weights."""
    params = validate(
        {
            "dataset": {"name": "indian_pines"},
            "patch": {"size": P},
            "compute": {"device": "cpu"},
            "train": {"epochs": 4, "tile_pixels": 30},
            "tracking": {"enabled": False},
        }
    )
    runs = {}
    for case in ("killed", "whole"):
        root = tmp_path / case
        root.mkdir()
        (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
        _write_prepared(root, "indian_pines")
        runs[case] = root
    args = ("train", "--model", "hybridsn", "--seed", "0")
    state_file = runs["killed"] / "models" / "indian_pines" / ".resume" / "hybridsn-seed0.pt"

    killed_at = _kill_resume_and_run_whole(runs, args, state_file, epochs=4)
    summary = json.loads(
        (runs["killed"] / "reports" / "indian_pines" / "hybridsn-seed0" / "train.json").read_text()
    )
    assert summary["resumed_from_epoch"] == killed_at + 1
    a, b = (
        load_checkpoint(runs[c] / "models" / "indian_pines" / "hybridsn-seed0.pt")["state_dict"]
        for c in ("killed", "whole")
    )
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["state"]["epoch"])
    except Exception:  # being renamed into place right now
        return -1


@pytest.mark.integration
def test_denoise_train_stage_resumes_after_kill_9(tmp_path):
    """The denoiser trains through the same loop: kill -9 of `hsi denoise_train` mid-training,
    the same command resumes from the last finished epoch and ends with the weights of a run
    never killed."""
    from pipeline.data.fetching import fetch_dataset

    params = validate(
        {
            "dataset": {"name": "indian_pines", "crop": [0, 40, 0, 40]},
            "compute": {"device": "cpu"},
            "denoise": {
                "models": ["dncnn"],
                "depth": 3,
                "channels": 8,
                "patch_size": 16,
                "batch_size": 8,
                "epochs": 4,
                "steps_per_epoch": 200,  # about 0.5 s an epoch: time to catch it mid-run
            },
            "tracking": {"enabled": False},
        }
    )
    runs = {}
    for case in ("killed", "whole"):
        root = tmp_path / case
        (root / "data" / "raw").mkdir(parents=True)
        (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
        fetch_dataset("indian_pines", root / "data" / "raw" / "indian_pines", progress=False)
        runs[case] = root
    args = ("denoise_train", "--model", "dncnn")
    models = Path("models") / "indian_pines"
    state_file = runs["killed"] / models / ".resume" / "denoisers" / "dncnn.pt"

    killed_at = _kill_resume_and_run_whole(runs, args, state_file, epochs=4)
    summary = json.loads(
        (
            runs["killed"] / "reports" / "indian_pines" / "denoise" / "dncnn" / "train.json"
        ).read_text()
    )
    assert summary["resumed_from_epoch"] == killed_at + 1
    a, b = (
        torch.load(runs[c] / models / "denoisers" / "dncnn.pt", weights_only=True)["state_dict"]
        for c in ("killed", "whole")
    )
    for key in a:
        assert torch.equal(a[key], b[key]), key
