"""Advertised features that must not vanish silently: each test here goes red when its feature
is removed (SE in hybridsn_se, the cosine schedule, pca.fit_on)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from prepared import prepared_data, train_cfg

from pipeline.models import build_model
from pipeline.models.blocks import SqueezeExcite
from pipeline.params import validate
from pipeline.training.classifier import train_classifier


def test_hybridsn_se_gates_its_features():
    """hybridsn_se = hybridsn + SE: same weights without the SE gates give other logits."""
    torch.manual_seed(0)
    se = build_model("hybridsn_se", 16, 11, 3, dropout=0.4).eval()
    assert any(isinstance(m, SqueezeExcite) for m in se.modules())
    plain = build_model("hybridsn", 16, 11, 3, dropout=0.4).eval()
    shared = {k: v for k, v in se.state_dict().items() if not k.startswith("se.")}
    plain.load_state_dict(shared, strict=True)
    x = torch.randn(4, 1, 16, 11, 11)
    with torch.no_grad():
        gated, ungated = se(x), plain(x)
        # the gates are sigmoids: forcing them to 1 must give the plain model's logits
        for p in se.se.fc2.parameters():
            p.zero_()
        se.se.fc2.bias.fill_(50.0)
        opened = se(x)
    torch.testing.assert_close(opened, ungated, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(gated, ungated, rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def small_scene():
    rng = np.random.default_rng(0)
    labels = np.zeros((14, 14), np.int64)
    labels[1:13, 1:7] = 1
    labels[1:13, 7:13] = 2
    cube = rng.normal(size=(14, 14, 6)).astype(np.float32)
    cube[labels == 2, 0] += 2.0
    labelled = labels > 0
    train = labelled & (rng.random(labels.shape) < 0.5)
    val = labelled & ~train
    return cube, labels, train, val


@pytest.mark.parametrize("schedule", ["cosine", "none"])
def test_learning_rate_follows_the_schedule(small_scene, schedule):
    cube, labels, train, val = small_scene
    epochs, lr = 4, 1e-2
    torch.manual_seed(0)
    model = build_model("hybridsn_2d3d", 6, 9, 2, dropout=0.4)
    cfg = train_cfg(epochs=epochs, batch_size=64, lr=lr, schedule=schedule)
    result = train_classifier(
        model, prepared_data(cube, labels, train, val), cfg, seed=0, patch_size=9,
        device="cpu", amp=False, progress=False,
    )  # fmt: skip
    # the lr each epoch ran with, as recorded after the epoch's scheduler step
    got = [row["lr"] for row in result.history]
    if schedule == "cosine":
        want = [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(1, epochs + 1)]
    else:
        want = [lr] * epochs
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)


def _prepare(tmp_path, monkeypatch, fit_on: str) -> dict:
    """fetch + prepare a small custom scene in a folder of its own; return arrays it wrote."""
    from pipeline.stages import fetch, prepare

    rng = np.random.default_rng(1)
    cube = rng.normal(size=(16, 16, 8)).astype(np.float32)
    cube[:, 8:] += 3.0  # the right half differs, so the fitting pixels change the mean
    gt = np.zeros((16, 16), np.uint8)
    gt[:, :8] = 1
    gt[2:10, 10:14] = 2
    np.save(tmp_path / "cube.npy", cube)
    np.save(tmp_path / "gt.npy", gt)
    params = validate(
        {
            "protocol": "custom",
            "dataset": {
                "name": "custom",
                "custom": {"cube": str(tmp_path / "cube.npy"), "gt": str(tmp_path / "gt.npy")},
            },
            "pca": {"components": 3, "fit_on": fit_on},
            "patch": {"size": 3},
        }
    )
    work = tmp_path / fit_on
    work.mkdir()
    monkeypatch.chdir(work)
    fetch.run(params)
    prepare.run(params)
    out = work / "data" / "prepared" / "custom"
    split = np.load(out / "split.npz")
    return {
        "cube": cube,
        "fit": split["train"],  # PCA sees training pixels only, not even validation ones
        "mean": np.load(out / "pca.npz")["mean"],
        "fit_pixels": json.loads((out / "pca.json").read_text())["fit_pixels"],
    }


def test_pca_fit_on_train_uses_only_training_pixels(tmp_path, monkeypatch):
    train = _prepare(tmp_path, monkeypatch, "train")
    assert 0 < train["fit"].sum() < train["fit"].size
    assert train["fit_pixels"] == int(train["fit"].sum())
    np.testing.assert_allclose(train["mean"], train["cube"][train["fit"]].mean(0), rtol=1e-6)
    every = _prepare(tmp_path, monkeypatch, "all")
    assert every["fit_pixels"] == every["fit"].size
    np.testing.assert_allclose(every["mean"], every["cube"].reshape(-1, 8).mean(0), rtol=1e-6)
    assert not np.allclose(train["mean"], every["mean"])
