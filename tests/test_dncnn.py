"""DnCNN model, the row split, band scaling and the denoiser training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models.dncnn import DnCNN
from pipeline.training.denoiser import (
    GAP_ROWS,
    DenoiseConfig,
    RowSplit,
    add_noise,
    band_range,
    load_denoiser,
    noise_levels,
    row_split,
    sample_patches,
    save_denoiser,
    scale_bands,
    train_denoiser,
    unscale_bands,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP stalls on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def smooth_cube(h=28, w=28, bands=4, seed=0) -> np.ndarray:
    """Piecewise-smooth bands in [0, 1]: what a denoiser can learn from in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((h, w, bands), np.float32)
    for b in range(bands):
        fx, fy, ph = rng.uniform(1, 3, size=3)
        out[..., b] = 0.5 + 0.3 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        out[..., b] += 0.15 * (xx > rng.uniform(0.3, 0.7))
    return np.clip(out, 0, 1)


def test_forward_is_input_minus_predicted_noise():
    model = DnCNN(depth=5, channels=8).eval()
    x = torch.rand(3, 1, 19, 23)
    with torch.no_grad():
        out, noise = model(x), model.predict_noise(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x - noise, rtol=0, atol=0)


def test_layout_follows_the_paper():
    model = DnCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert (convs[0].in_channels, convs[0].out_channels) == (1, 64)
    assert (convs[-1].in_channels, convs[-1].out_channels) == (64, 1)
    assert sum(p.numel() for p in model.parameters()) == 556_096
    assert model.receptive_field == 35
    assert all(bn.weight.abs().max() <= 0.025 for bn in bns)


def test_config_rebuilds_the_model():
    model = DnCNN(depth=4, channels=6)
    clone = DnCNN(**model.config)
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 9, 9)
    torch.testing.assert_close(model.eval()(x), clone.eval()(x))


@pytest.mark.parametrize("kw", [{"depth": 2}, {"channels": 0}, {"depth": 3.5}])
def test_bad_sizes_are_params_errors(kw):
    with pytest.raises(ParamsError):
        DnCNN(**kw)


@pytest.mark.parametrize("height", [12, 40, 145, 610])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_row_split_is_disjoint_with_a_gap(height, fraction):
    split = row_split(height, fraction)
    train = set(range(height)[split.train])
    test = set(range(height)[split.test])
    assert train and test and not train & test
    assert max(test) == height - 1 and min(train) == 0
    assert min(test) - max(train) - 1 == GAP_ROWS == split.gap
    assert len(test) == max(1, round(fraction * height))
    assert RowSplit.from_dict(split.to_dict()) == split


def test_row_split_too_small_scene():
    with pytest.raises(ParamsError, match="no training rows"):
        row_split(5, 0.3)


def test_band_scaling_round_trip():
    rng = np.random.default_rng(0)
    cube = rng.uniform(100, 5000, size=(6, 5, 3)).astype(np.float32)
    cube[..., 2] = 7.0
    lo, hi = band_range(cube)
    scaled = scale_bands(cube, lo, hi)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[..., :2].min(axis=(0, 1)), 0, atol=1e-6)
    np.testing.assert_allclose(scaled[..., :2].max(axis=(0, 1)), 1, atol=1e-6)
    assert np.all(scaled[..., 2] == 0)
    np.testing.assert_allclose(unscale_bands(scaled, lo, hi), cube, rtol=1e-5)


def test_add_noise_has_the_requested_sigma_and_is_seeded():
    clean = np.full((64, 64, 8), 0.5, np.float32)
    noisy = add_noise(clean, 30, seed=3)
    assert noisy.dtype == np.float32
    assert abs((noisy - clean).std() - 30 / 255) < 2e-3
    np.testing.assert_array_equal(noisy, add_noise(clean, 30, seed=3))
    np.testing.assert_array_equal(add_noise(clean, 0, seed=1), clean)


def test_sample_patches_cuts_real_windows():
    b, h, w = np.meshgrid(np.arange(3), np.arange(10), np.arange(12), indexing="ij")
    region = torch.as_tensor(b * 10_000 + h * 100 + w, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = sample_patches(region, 50, 4, gen)
    assert x.shape == (50, 1, 4, 4)
    offsets = (x - x[:, :, :1, :1])[:, 0]
    expected = torch.arange(4)[:, None] * 100 + torch.arange(4)[None, :]
    assert torch.equal(offsets, expected.expand(50, 4, 4).float())
    corner = x[:, 0, 0, 0].long()
    assert ((corner % 100) <= 12 - 4).all() and ((corner // 100 % 100) <= 10 - 4).all()


def test_blind_noise_levels_stay_in_range():
    cfg = DenoiseConfig(blind=True, sigma_range=(10, 50))
    s = noise_levels(1000, cfg, torch.Generator().manual_seed(0), "cpu") * 255
    assert s.min() >= 10 and s.max() <= 50 and s.std() > 5
    fixed = noise_levels(5, DenoiseConfig(sigma=25), torch.Generator(), "cpu") * 255
    torch.testing.assert_close(fixed, torch.full((5,), 25.0))


def _tiny_config(**kw) -> DenoiseConfig:
    base = {
        "sigma": 30,
        "patch_size": 16,
        "batch_size": 8,
        "epochs": 4,
        "steps_per_epoch": 6,
        "lr": 3e-3,
        "val_patches": 8,
    }
    return DenoiseConfig(**{**base, **kw})


def test_a_few_steps_lower_the_loss():
    cfg = _tiny_config()
    model = DnCNN(depth=3, channels=8)
    result = train_denoiser(model, smooth_cube(), cfg, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert len(result.history) == 4
    assert losses[-1] < losses[0]
    assert result.best_val_psnr > result.initial_val_psnr
    assert result.noisy_val_psnr == pytest.approx(20 * np.log10(255 / 30), abs=0.5)
    assert result.patch_size == 16


def test_training_is_deterministic_on_cpu():
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = DnCNN(depth=3, channels=4)
        res = train_denoiser(
            model, smooth_cube(), _tiny_config(epochs=2, steps_per_epoch=2), progress=False
        )
        runs.append(res)
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]
    for k, v in runs[0].state_dict.items():
        assert torch.equal(v, runs[1].state_dict[k])


def test_patch_shrinks_to_a_small_region_and_blind_training_runs():
    cfg = _tiny_config(patch_size=40, blind=True, epochs=1, steps_per_epoch=1)
    res = train_denoiser(DnCNN(depth=3, channels=4), smooth_cube(12, 20), cfg, progress=False)
    assert res.patch_size == 12


def test_checkpoint_round_trip_loads_weights_only(tmp_path):
    model = DnCNN(depth=3, channels=4).eval()
    lo, hi = np.arange(3.0), np.arange(3.0) + 10
    path = tmp_path / "m" / "dncnn.pt"
    split = row_split(40, 0.3)
    save_denoiser(
        path,
        state_dict=model.state_dict(),
        model_config=model.config,
        band_min=lo,
        band_max=hi,
        noise={"sigma": 30.0, "blind": False, "sigma_range": [10.0, 50.0]},
        split=split,
        meta={"dataset": "x", "shape": [40, 40, 3]},
    )
    loaded, ckpt = load_denoiser(path)
    np.testing.assert_array_equal(ckpt["band_min"], lo)
    assert RowSplit.from_dict(ckpt["split"]) == split
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    assert torch.load(path, weights_only=True)["kind"] == "dncnn"
