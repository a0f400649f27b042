"""DnCNN band-denoiser training on one hyperspectral scene, with a spatially held-out test region.

Clean data are the raw cube's bands scaled to [0, 1] per band (min/max over the whole scene, kept
in the checkpoint so noisy raw cubes can be mapped the same way). Noise is additive white
Gaussian with σ given in /255 units as in the denoising literature (σ = 10, 30, 50 → 10/255, …),
fixed or, for blind training, drawn per patch from a range. Random patches of single bands are cut
on the device from the training rows, randomly rotated/flipped per batch (the 8 modes of the
reference), and the network learns the noise (residual learning) with an MSE loss.

Spatial split (:func:`row_split`): the bottom ``test_fraction`` of the scene's rows is the held-out
test region, the :data:`GAP_ROWS` rows above it are used by nobody, and training (including the
validation patches) uses only the rows above the gap.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.errors import DataError, ParamsError
from pipeline.io import atomic_path
from pipeline.models.dncnn import DnCNN
from pipeline.training.common import autocast, seed_everything

GAP_ROWS = 4
"""Rows between the training and the test region that neither uses, so no training patch touches
a row adjacent to a test row."""

VAL_PATCHES = 64
BN_CALIBRATION_BATCHES = 8
"""Batches whose BatchNorm statistics replace the running averages before each validation."""
LR_DECAY_AT = 0.6
"""Fraction of the epochs after which the learning rate drops 10× (SaoYan: epoch 30 of 50)."""

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RowSplit:
    """Rows ``[0, train_stop)`` train, ``[train_stop, test_start)`` unused, ``[test_start, height)``
    held out for testing."""

    height: int
    train_stop: int
    test_start: int

    @property
    def train(self) -> slice:
        return slice(0, self.train_stop)

    @property
    def test(self) -> slice:
        return slice(self.test_start, self.height)

    @property
    def gap(self) -> int:
        return self.test_start - self.train_stop

    def to_dict(self) -> dict:
        return {
            "height": self.height,
            "train_rows": [0, self.train_stop],
            "test_rows": [self.test_start, self.height],
            "gap_rows": self.gap,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RowSplit:
        return cls(int(d["height"]), int(d["train_rows"][1]), int(d["test_rows"][0]))


def row_split(height: int, test_fraction: float, gap: int = GAP_ROWS) -> RowSplit:
    """Hold out the bottom ``round(test_fraction · height)`` rows (at least one) for testing.

    Training gets rows ``0 … height − n_test − gap − 1``; the ``gap`` rows in between are unused.
    Raises ParamsError when no training row is left.
    """
    if not 0 < test_fraction < 1:
        raise ParamsError(f"'denoise.test_fraction' = {test_fraction} must lie in (0, 1)")
    n_test = max(1, round(test_fraction * height))
    test_start = height - n_test
    train_stop = test_start - gap
    if train_stop < 1:
        raise ParamsError(
            f"a scene of {height} rows leaves no training rows with 'denoise.test_fraction' = "
            f"{test_fraction} and a {gap}-row gap"
        )
    return RowSplit(height, train_stop, test_start)


def band_range(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band minimum and maximum (float64, shape (B,)) of an (H, W, B) cube."""
    flat = np.asarray(cube).reshape(-1, cube.shape[-1])
    return flat.min(axis=0).astype(np.float64), flat.max(axis=0).astype(np.float64)


def _span(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
    return np.where(span > 0, span, 1.0)


def scale_bands(cube: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(H, W, B) raw values → float32 with each band's [lo, hi] mapped to [0, 1]."""
    if cube.shape[-1] != len(lo):
        raise DataError(f"the cube has {cube.shape[-1]} bands but the scaling has {len(lo)}")
    return ((np.asarray(cube, np.float64) - lo) / _span(lo, hi)).astype(np.float32)


def unscale_bands(cube01: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse of :func:`scale_bands`, as float32 raw units."""
    return (np.asarray(cube01, np.float64) * _span(lo, hi) + lo).astype(np.float32)


def add_noise(clean01: np.ndarray, sigma: float, seed) -> np.ndarray:
    """``clean01`` plus white Gaussian noise of standard deviation ``sigma``/255 (float32).

    ``seed`` is anything :func:`numpy.random.default_rng` takes (an int, a list of ints).
    """
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(clean01.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return (clean01.astype(np.float32) + noise).astype(np.float32)


@dataclass
class DenoiseConfig:
    sigma: float = 30.0
    blind: bool = False
    sigma_range: tuple[float, float] = (10.0, 50.0)
    patch_size: int = 40
    batch_size: int = 128
    epochs: int = 30
    steps_per_epoch: int = 100
    lr: float = 1e-3
    seed: int = 0
    amp: bool = True
    val_patches: int = VAL_PATCHES

    def noise(self) -> dict:
        return {"sigma": self.sigma, "blind": self.blind, "sigma_range": list(self.sigma_range)}


@dataclass
class DenoiseResult:
    state_dict: dict
    best_epoch: int
    best_val_psnr: float
    initial_val_psnr: float
    noisy_val_psnr: float
    patch_size: int
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    patches_per_s: float = 0.0


def sample_patches(region: torch.Tensor, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random single-band ``size``×``size`` patches (n, 1, size, size) of a (B, H, W)
    tensor, drawn on its device."""
    bands, h, w = region.shape
    dev = region.device
    b = torch.randint(bands, (n,), generator=gen, device=dev)
    r = torch.randint(h - size + 1, (n,), generator=gen, device=dev)
    c = torch.randint(w - size + 1, (n,), generator=gen, device=dev)
    offs = torch.arange(size, device=dev)
    rows = (r[:, None] + offs)[:, :, None]
    cols = (c[:, None] + offs)[:, None, :]
    return region[b[:, None, None], rows, cols].unsqueeze(1)


def noise_levels(n: int, cfg: DenoiseConfig, gen: torch.Generator, device) -> torch.Tensor:
    """Per-patch σ in [0, 1] units: ``cfg.sigma``/255, or uniform in ``sigma_range``/255 if blind."""
    if not cfg.blind:
        return torch.full((n,), cfg.sigma / 255.0, device=device)
    lo, hi = cfg.sigma_range
    u = torch.rand((n,), generator=gen, device=device)
    return (lo + (hi - lo) * u) / 255.0


def _noise(like: torch.Tensor, sigmas: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
    return z * sigmas.view(-1, 1, 1, 1)


def _augment(x: torch.Tensor, mode: int) -> torch.Tensor:
    """One of the 8 rotations/flips of the reference's ``data_augmentation``."""
    x = torch.rot90(x, mode % 4, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if mode >= 4 else x


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    region: torch.Tensor,
    cfg: DenoiseConfig,
    size: int,
    gen: torch.Generator,
    batches: int = BN_CALIBRATION_BATCHES,
) -> None:
    """Replace BatchNorm running statistics by their average over fresh noisy training batches.

    The exponential running averages lag the quickly moving weights early in training: after a
    few hundred steps eval-mode outputs were as noisy as the input while train-mode outputs were
    already clean. Averaging the statistics of the current weights ("precise BN") removes that
    gap; it costs ``batches`` forward passes.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(batches):
        x = sample_patches(region, cfg.batch_size, size, gen)
        noise = _noise(x, noise_levels(cfg.batch_size, cfg, gen, region.device), gen)
        with autocast(region.device, cfg.amp):
            model.predict_noise(x + noise)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def _val_psnr(model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, cfg: DenoiseConfig):
    """PSNR (dB, peak 1) of the denoised validation patches, from the MSE pooled over them."""
    model.eval()
    err = torch.zeros((), device=noisy.device, dtype=torch.float64)
    for start in range(0, noisy.shape[0], cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        with autocast(noisy.device, cfg.amp):
            out = model(noisy[sl]).float()
        err += (out - clean[sl]).double().pow(2).sum()
    return _psnr_from_mse(err.item() / clean.numel())


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def _check_config(cfg: DenoiseConfig) -> None:
    lo, hi = cfg.sigma_range
    if cfg.blind and not 0 <= lo <= hi:
        raise ParamsError(f"'denoise.sigma_range' = {[lo, hi]} must be [low, high], low <= high")


def train_denoiser(
    model: DnCNN,
    clean: np.ndarray,
    cfg: DenoiseConfig,
    *,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> DenoiseResult:
    """Train ``model`` on the training region ``clean`` (H, W, B, scaled to [0, 1]).

    Each step draws ``batch_size`` random band patches on the device, adds noise and minimises the
    MSE between predicted and true noise with Adam (lr drops 10× after :data:`LR_DECAY_AT` of
    the epochs). After each epoch the BatchNorm statistics are recalibrated
    (:func:`recalibrate_batchnorm`) and the PSNR on a fixed noisy validation set (``val_patches``
    patches of the same region, its own seed) is logged; the best-PSNR weights are kept. The
    patch size is shrunk to the region's size when the region is smaller. On CPU a fixed seed
    gives an identical run; bf16 autocast is used on CUDA when ``cfg.amp``.
    """
    _check_config(cfg)
    device = torch.device(device)
    cpu_gen = seed_everything(cfg.seed, deterministic=device.type == "cpu")
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    val_gen = torch.Generator(device=device)
    val_gen.manual_seed(cfg.seed + 1_000_003)
    bn_gen = torch.Generator(device=device)
    bn_gen.manual_seed(cfg.seed + 2_000_003)

    h, w, _ = clean.shape
    size = min(cfg.patch_size, h, w)
    region = torch.as_tensor(np.ascontiguousarray(np.moveaxis(clean, -1, 0)), dtype=torch.float32)
    region = region.to(device)
    val_clean = sample_patches(region, cfg.val_patches, size, val_gen)
    val_noisy = val_clean + _noise(
        val_clean, noise_levels(cfg.val_patches, cfg, val_gen, device), val_gen
    )
    noisy_psnr = _psnr_from_mse((val_noisy - val_clean).double().pow(2).mean().item())

    model.to(device)
    initial = _val_psnr(model, val_noisy, val_clean, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    decay_epoch = max(1, math.ceil(LR_DECAY_AT * cfg.epochs)) + 1
    best = DenoiseResult(
        state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        best_epoch=0,
        best_val_psnr=initial,
        initial_val_psnr=initial,
        noisy_val_psnr=noisy_psnr,
        patch_size=size,
    )
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.epochs * cfg.steps_per_epoch, desc="dncnn", unit="step", disable=not progress
    )
    for epoch in range(1, cfg.epochs + 1):
        lr = cfg.lr * (0.1 if cfg.epochs > 1 and epoch >= decay_epoch else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum = torch.zeros((), device=device)
        for _ in range(cfg.steps_per_epoch):
            x = sample_patches(region, cfg.batch_size, size, gen)
            x = _augment(x, int(torch.randint(8, (1,), generator=cpu_gen)))
            noise = _noise(x, noise_levels(cfg.batch_size, cfg, gen, device), gen)
            with autocast(device, cfg.amp):
                pred = model.predict_noise(x + noise)
            loss = nn.functional.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            bar.update()
        recalibrate_batchnorm(model, region, cfg, size, bn_gen)
        val = _val_psnr(model, val_noisy, val_clean, cfg)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / cfg.steps_per_epoch,
            "val_psnr": val,
            "lr": lr,
            "time_s": time.perf_counter() - t0,
        }
        history.append(row)
        if val > best.best_val_psnr or best.best_epoch == 0:
            best.best_val_psnr, best.best_epoch = val, epoch
            best.state_dict = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
        bar.set_postfix(loss=f"{row['train_loss']:.2e}", psnr=f"{val:.2f}")
        if on_epoch is not None:
            on_epoch(row)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best.wall_time_s = time.perf_counter() - t0
    best.patches_per_s = cfg.epochs * cfg.steps_per_epoch * cfg.batch_size / best.wall_time_s
    best.history = history
    model.load_state_dict(best.state_dict)
    return best


def save_denoiser(
    path: str | os.PathLike,
    *,
    state_dict: dict,
    model_config: dict,
    band_min: np.ndarray,
    band_max: np.ndarray,
    noise: dict,
    split: RowSplit,
    meta: dict,
) -> None:
    """Write a checkpoint of tensors, numbers, strings, lists and dicts only."""
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": "dncnn",
        "state_dict": state_dict,
        "model_config": dict(model_config),
        "band_min": torch.as_tensor(np.asarray(band_min, np.float64)),
        "band_max": torch.as_tensor(np.asarray(band_max, np.float64)),
        "noise": dict(noise),
        "split": split.to_dict(),
        "meta": dict(meta),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_denoiser(path: str | os.PathLike, device="cpu") -> tuple[DnCNN, dict]:
    """The DnCNN in eval mode on ``device`` and its checkpoint (band_min/max as numpy arrays)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: DnCNN checkpoint not found; run `hsi denoise_train` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "dncnn":
        raise DataError(f"{path}: not a DnCNN checkpoint")
    ckpt["band_min"] = ckpt["band_min"].numpy()
    ckpt["band_max"] = ckpt["band_max"].numpy()
    model = DnCNN(**ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def config_dict(cfg: DenoiseConfig) -> dict:
    out = asdict(cfg)
    out["sigma_range"] = list(cfg.sigma_range)
    return out
