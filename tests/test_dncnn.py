"""DnCNN models (band-wise, subspace, spectral context), the row split, band scaling, noise and the
denoiser training loop with its resume state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prepared import denoise_cfg
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models import rebuild, spec
from pipeline.models.dncnn import DnCNN
from pipeline.models.dncnn_spectral import DnCNNSpectral, neighbour_bands
from pipeline.models.dncnn_subspace import DnCNNSubspace, eigen_images, fit_subspace
from pipeline.training import denoiser as denoiser_module
from pipeline.training.checkpoint import StateFile
from pipeline.training.denoise_data import (
    GAP_ROWS,
    RowSplit,
    add_noise,
    band_range,
    noise_levels,
    row_split,
    sample_patches,
    scale_bands,
    training_scaling,
    unscale_bands,
)
from pipeline.training.denoiser import load_denoiser, save_denoiser, train_denoiser


def build_denoiser(name, **config):
    return spec(name, "denoising").cls(**config)


def training_planes(name, clean, *, k=2, sub=None, rank=None):
    """The planes model ``name`` trains on (its own :meth:`training_planes`)."""
    kw = {
        "dncnn_subspace": {"bands": clean.shape[-1], "rank": rank or 1},
        "dncnn_spectral": {"k": k},
    }
    model = build_denoiser(name, depth=3, channels=4, **kw.get(name, {}))
    if name == "dncnn_subspace":
        model.set_subspace(sub.mean, sub.basis, sub.eigvals)
    return model.training_planes(clean)


pytestmark = pytest.mark.usefixtures("one_thread")


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
    model = DnCNN(depth=17, channels=64)
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
    clone = rebuild(model.config)
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 9, 9)
    torch.testing.assert_close(model.eval()(x), clone.eval()(x))


@pytest.mark.parametrize("kw", [{"depth": 2}, {"channels": 0}, {"depth": 3.5}])
def test_bad_sizes_are_params_errors(kw):
    with pytest.raises(ParamsError):
        DnCNN(**{"depth": 17, "channels": 64, **kw})


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
    x = sample_patches(region, torch.arange(3)[:, None], 50, 4, gen)
    assert x.shape == (50, 1, 4, 4)
    offsets = (x - x[:, :, :1, :1])[:, 0]
    expected = torch.arange(4)[:, None] * 100 + torch.arange(4)[None, :]
    assert torch.equal(offsets, expected.expand(50, 4, 4).float())
    corner = x[:, 0, 0, 0].long()
    assert ((corner % 100) <= 12 - 4).all() and ((corner // 100 % 100) <= 10 - 4).all()


def test_blind_noise_levels_stay_in_range():
    s = noise_levels(1000, 30, (10, 50), True, torch.Generator().manual_seed(0), "cpu") * 255
    assert s.min() >= 10 and s.max() <= 50 and s.std() > 5
    fixed = noise_levels(5, 25, (10, 50), False, torch.Generator(), "cpu") * 255
    torch.testing.assert_close(fixed, torch.full((5,), 25.0))


def test_blind_training_draws_sigma_in_range(monkeypatch):
    """The loop's noise comes from cfg.sigma_range when blind: its spread spans the range."""
    drawn = []
    real = denoiser_module.noise_like

    def spy(x, sigmas, gen):
        drawn.append(sigmas * 255)
        return real(x, sigmas, gen)

    monkeypatch.setattr(denoiser_module, "noise_like", spy)
    cfg = _tiny_config(blind=True, sigma_range=(0, 55), epochs=1, steps_per_epoch=20)
    planes = training_planes("dncnn", smooth_cube())
    train_denoiser(DnCNN(depth=3, channels=4), planes, cfg, progress=False)
    s = torch.cat(drawn)
    assert s.min() >= 0 and s.max() <= 55
    assert s.min() < 5 and s.max() > 50


def _tiny_config(**kw):
    base = {
        "sigma": 30,
        "blind": False,
        "early_stopping": 0,
        "patch_size": 16,
        "batch_size": 8,
        "epochs": 4,
        "steps_per_epoch": 6,
        "lr": 3e-3,
        "val_patches": 8,
    }
    return denoise_cfg(**{**base, **kw})


def test_a_few_steps_lower_the_loss():
    cfg = _tiny_config()
    model = DnCNN(depth=3, channels=8)
    result = train_denoiser(model, training_planes("dncnn", smooth_cube()), cfg, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert len(result.history) == 4
    assert losses[-1] < losses[0]
    assert result.best_score > result.extra["initial_val_psnr"]
    assert result.extra["noisy_val_psnr"] == pytest.approx(20 * np.log10(255 / 30), abs=0.5)
    assert result.extra["patch_size"] == 16


def test_training_is_deterministic_on_cpu():
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = DnCNN(depth=3, channels=4)
        res = train_denoiser(
            model,
            training_planes("dncnn", smooth_cube()),
            _tiny_config(epochs=2, steps_per_epoch=2),
            progress=False,
        )
        runs.append(res)
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]
    for k, v in runs[0].state_dict.items():
        assert torch.equal(v, runs[1].state_dict[k])


def test_patch_shrinks_to_a_small_region_and_blind_training_runs():
    cfg = _tiny_config(patch_size=40, blind=True, epochs=1, steps_per_epoch=1)
    planes = training_planes("dncnn", smooth_cube(12, 20))
    res = train_denoiser(DnCNN(depth=3, channels=4), planes, cfg, progress=False)
    assert res.extra["patch_size"] == 12


@pytest.mark.parametrize("name", ["dncnn", "dncnn_subspace", "dncnn_spectral"])
def test_checkpoint_round_trip_loads_weights_only(tmp_path, name):
    clean = smooth_cube(bands=6)
    sub = fit_subspace(clean)
    kw = {"dncnn_subspace": {"bands": 6, "rank": 3}, "dncnn_spectral": {"k": 2}}.get(name, {})
    model = build_denoiser(name, depth=3, channels=4, **kw).eval()
    if name == "dncnn_subspace":
        model.set_subspace(sub.mean, sub.basis, sub.eigvals)
    lo, hi = np.arange(6.0), np.arange(6.0) + 10
    path = tmp_path / "m" / f"{name}.pt"
    split = row_split(40, 0.3)
    save_denoiser(
        path,
        model=model,
        band_min=lo,
        band_max=hi,
        noise={"sigma": 30.0, "blind": False, "sigma_range": [10.0, 50.0]},
        split=split.to_dict(),
        meta={"dataset": "x", "shape": [40, 40, 6]},
    )
    loaded, ckpt = load_denoiser(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(ckpt["band_min"], lo)
    assert RowSplit.from_dict(ckpt["split"]) == split
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.load(path, weights_only=True)["kind"] == "dncnn"


def _scene(h=40, w=30, bands=6, seed=0):
    return (smooth_cube(h, w, bands, seed) * 4000 + 1000).astype(np.float32)


def test_scaling_never_reads_the_held_out_rows():
    cube = _scene()
    split = row_split(cube.shape[0], 0.3)
    lo, hi = training_scaling(cube, split)
    corrupt = cube.copy()
    corrupt[split.train_stop :] = np.where(np.arange(6) % 2, 1e9, -1e9).astype(np.float32)
    lo2, hi2 = training_scaling(corrupt, split)
    np.testing.assert_array_equal(lo, lo2)
    np.testing.assert_array_equal(hi, hi2)
    np.testing.assert_array_equal((lo, hi), band_range(cube[: split.train_stop]))


def test_denoise_train_saves_the_training_row_scaling(tmp_path, monkeypatch):
    """The stage end to end: corrupting the held-out (and gap) rows leaves the saved scaling
    unchanged."""
    from pipeline.data.fetching import fetch_dataset
    from pipeline.params import validate
    from pipeline.stages import denoise_train

    monkeypatch.chdir(tmp_path)
    labels = np.ones((40, 30), np.uint8)
    saved = []
    for corrupt in (False, True):
        cube = _scene()
        if corrupt:
            cube[row_split(40, 0.3).train_stop :] = 1e6
        np.save(tmp_path / "cube.npy", cube)
        np.save(tmp_path / "gt.npy", labels)
        custom = {"cube": str(tmp_path / "cube.npy"), "gt": str(tmp_path / "gt.npy")}
        raw = tmp_path / "data" / "raw" / "custom"
        fetch_dataset("custom", raw, custom=custom)
        params = validate(
            {
                "dataset": {"name": "custom", "custom": custom},
                "compute": {"device": "cpu"},
                "denoise": {
                    "models": ["dncnn"],
                    "depth": 3,
                    "channels": 4,
                    "patch_size": 16,
                    "batch_size": 4,
                    "epochs": 1,
                    "steps_per_epoch": 1,
                },
                "tracking": {"enabled": False},
            }
        )
        denoise_train.run(params, "dncnn")
        _, ckpt = load_denoiser(tmp_path / "models" / "custom" / "denoisers" / "dncnn.pt")
        saved.append((ckpt["band_min"], ckpt["band_max"]))
    np.testing.assert_array_equal(saved[0][0], saved[1][0])
    np.testing.assert_array_equal(saved[0][1], saved[1][1])
    assert saved[0][1].max() < 1e6


def test_subspace_round_trip_is_exact_without_noise():
    clean = smooth_cube(bands=8)
    sub = fit_subspace(clean)
    np.testing.assert_allclose(sub.basis.T @ sub.basis, np.eye(8), atol=1e-10)
    z = eigen_images(clean, sub)
    np.testing.assert_allclose(sub.mean + z.astype(np.float64) @ sub.basis.T, clean, atol=1e-5)
    model = DnCNNSubspace(depth=3, channels=4, bands=8, rank=3)
    model.set_subspace(sub.mean, sub.basis, sub.eigvals)
    model.denoiser = _Identity()
    with torch.no_grad():
        out = model(torch.from_numpy(clean))
    np.testing.assert_allclose(out.numpy(), clean, atol=1e-5)


class _Identity(torch.nn.Module):
    name = "identity"

    def forward(self, x):
        return x


def test_subspace_tail_is_shrunk_by_the_estimated_noise():
    """Noise-free tail coefficients are kept (σ̂ ≈ 0); with noise they are shrunk toward zero."""
    clean = smooth_cube(bands=8)
    sub = fit_subspace(clean)
    model = DnCNNSubspace(depth=3, channels=4, bands=8, rank=2)
    model.set_subspace(sub.mean, sub.basis, sub.eigvals)
    z = model.eigen_images(torch.from_numpy(clean))
    assert model.tail_weights(z).min() > 0.95
    noisy = torch.from_numpy(add_noise(clean, 50, 0))
    lam = model.eigvals[2:]
    wiener = lam / (lam + (50 / 255) ** 2)
    torch.testing.assert_close(
        model.tail_weights(model.eigen_images(noisy)), wiener, atol=0.1, rtol=0
    )


def test_training_planes_of_the_subspace_model_are_its_eigen_images():
    clean = smooth_cube(bands=8)
    sub = fit_subspace(clean)
    planes = training_planes("dncnn_subspace", clean, sub=sub, rank=3)
    assert planes.planes.shape == (3, 28, 28) and planes.table.tolist() == [[0], [1], [2]]
    np.testing.assert_allclose(
        np.moveaxis(planes.planes, 0, -1), eigen_images(clean, sub, 3), atol=1e-6
    )


@pytest.mark.parametrize("bands", [30, 7])
def test_spectral_neighbours_reflect_at_the_edges(bands):
    table = neighbour_bands(bands, 6)
    assert table.shape == (bands, 7)
    assert table[0].tolist() == [0, 3, 2, 1, 1, 2, 3]
    assert table[-1].tolist() == [bands - 1, bands - 4, bands - 3, bands - 2] + [
        bands - 2,
        bands - 3,
        bands - 4,
    ]
    mid = bands // 2
    assert table[mid].tolist() == [mid, mid - 3, mid - 2, mid - 1, mid + 1, mid + 2, mid + 3]
    assert table.min() >= 0 and table.max() < bands


def test_spectral_model_shapes_at_the_first_and_last_band():
    from pipeline.evaluation.denoise import denoise_cube

    model = DnCNNSpectral(depth=3, channels=4, k=4).eval()
    cube = smooth_cube(12, 10, bands=5)
    table = neighbour_bands(5, 4)
    planes = torch.from_numpy(np.moveaxis(cube, -1, 0).copy())
    for b in (0, 4):
        x = planes[table[b]][None]
        assert x.shape == (1, 5, 12, 10)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, 1, 12, 10)
    out = denoise_cube(model, cube, amp=False)
    assert out.shape == cube.shape
    with torch.no_grad():
        first = model(planes[table[0]][None])[0, 0].numpy()
        last = model(planes[table[4]][None])[0, 0].numpy()
    np.testing.assert_allclose(out[..., 0], first, atol=1e-5)
    np.testing.assert_allclose(out[..., 4], last, atol=1e-5)
    with pytest.raises(ParamsError, match="even"):
        DnCNNSpectral(depth=3, channels=4, k=3)
    with pytest.raises(ParamsError, match="neighbours"):
        neighbour_bands(2, 4)


@pytest.mark.parametrize("name", ["dncnn_subspace", "dncnn_spectral"])
def test_spectral_models_train(name):
    clean = smooth_cube(bands=6)
    sub = fit_subspace(clean)
    kw = {"dncnn_subspace": {"bands": 6, "rank": 3}, "dncnn_spectral": {"k": 2}}[name]
    model = build_denoiser(name, depth=3, channels=8, **kw)
    if name == "dncnn_subspace":
        model.set_subspace(sub.mean, sub.basis, sub.eigvals)
    planes = training_planes(name, clean, k=2, sub=sub, rank=3)
    res = train_denoiser(model.trainable_net, planes, _tiny_config(), progress=False)
    assert res.best_score > res.extra["initial_val_psnr"]


def test_batchnorm_recalibration_averages_fresh_batch_statistics():
    net = DnCNN(depth=3, channels=4)
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    batches = [torch.rand(4, 1, 8, 8) * (i + 1) for i in range(3)]
    seen = []
    bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    it = iter(batches)
    denoiser_module.recalibrate_batchnorm(net, lambda: (next(it), None), batches=3)
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    assert bn.momentum == 0.1


def test_the_loop_recalibrates_batchnorm_before_every_validation(monkeypatch):
    calls = []
    real = denoiser_module.recalibrate_batchnorm

    def spy(net, draw, **kw):
        calls.append(1)
        return real(net, draw, **kw)

    monkeypatch.setattr(denoiser_module, "recalibrate_batchnorm", spy)
    cfg = _tiny_config(epochs=3, steps_per_epoch=1)
    train_denoiser(DnCNN(depth=3, channels=4), training_planes("dncnn", smooth_cube()), cfg)
    assert len(calls) == 3


def test_early_stopping_ends_a_run_without_progress():
    cfg = _tiny_config(epochs=30, steps_per_epoch=1, lr=1e-9, early_stopping=2)
    res = train_denoiser(
        DnCNN(depth=3, channels=4), training_planes("dncnn", smooth_cube()), cfg, progress=False
    )
    assert len(res.history) < 30
    assert len(res.history) - res.best_epoch == 2


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path, caplog):
    """Stopped after epoch 2 (as a kill -9 would: the state of epoch 2 is on disk), the next
    call logs `resuming from epoch 3` and ends with the weights of an uninterrupted run."""
    planes = training_planes("dncnn", smooth_cube())
    cfg = _tiny_config(epochs=4, steps_per_epoch=2)
    torch.manual_seed(5)
    ref = train_denoiser(DnCNN(depth=3, channels=4), planes, cfg, progress=False)

    class Killed(Exception):
        pass

    def kill_after_two(row):
        if row["epoch"] == 2:
            raise Killed

    state = tmp_path / ".resume" / "dncnn.pt"
    torch.manual_seed(5)
    with pytest.raises(Killed):
        train_denoiser(
            DnCNN(depth=3, channels=4),
            planes,
            cfg,
            progress=False,
            store=StateFile(state, "fp"),
            on_epoch=kill_after_two,
        )
    assert state.is_file()
    torch.manual_seed(99)  # the fresh model's init must not matter: the state replaces it
    with caplog.at_level("INFO"):
        res = train_denoiser(
            DnCNN(depth=3, channels=4),
            planes,
            cfg,
            progress=False,
            store=StateFile(state, "fp"),
        )
    assert "resuming from epoch 3" in caplog.text
    assert res.resumed_from == 3
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in ref.history]
    for k, v in ref.state_dict.items():
        assert torch.equal(v, res.state_dict[k]), k


def test_subspace_model_leaves_a_clean_cube_as_it_is():
    """σ̂ ≈ 0 (no noise): the output is the input, whatever the network; with noise it is not."""
    from pipeline.evaluation.denoise import denoise_cube

    clean = smooth_cube(bands=8)
    sub = fit_subspace(clean)
    model = DnCNNSubspace(depth=3, channels=4, bands=8, rank=3).eval()
    model.set_subspace(sub.mean, sub.basis, sub.eigvals)
    np.testing.assert_array_equal(denoise_cube(model, clean, amp=False), clean)
    with torch.no_grad():
        assert torch.equal(model(torch.from_numpy(clean)), torch.from_numpy(clean))
    noisy = add_noise(clean, 30, 0)
    assert not np.allclose(denoise_cube(model, noisy, amp=False), noisy, atol=1e-3)
