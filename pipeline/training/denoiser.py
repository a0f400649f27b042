"""The denoiser training loop, the model registry and the denoiser checkpoint.

Data (rows, scaling, noise, training planes) come from :mod:`pipeline.training.denoise_data`.
Each step draws ``batch_size`` random patches of the training planes on the device, randomly
rotated/flipped per batch (the 8 modes of the DnCNN reference), adds noise of a fixed σ or, for
blind training, of a σ drawn per patch, and minimises the MSE between the predicted and the true
noise of the centre plane (residual learning) with Adam. After each epoch the BatchNorm
statistics are recalibrated and the PSNR of a fixed noisy validation set (patches of the same
training rows, their own seed) decides the kept weights and early stopping. Every epoch the
resume state is written with :mod:`pipeline.training.checkpoint`, so a killed run resumes from
its last completed epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.errors import ParamsError
from pipeline.models.denoisers import build_denoiser
from pipeline.models.dncnn_subspace import DnCNNSubspace
from pipeline.training.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_model,
    load_state,
    restore_rng,
    save_checkpoint,
    save_state,
)
from pipeline.training.common import autocast, seed_everything
from pipeline.training.denoise_data import Planes, noise_levels, noise_like, sample_patches

log = logging.getLogger(__name__)

VAL_PATCHES = 64
BN_CALIBRATION_BATCHES = 8
"""Batches whose BatchNorm statistics replace the running averages before each validation."""
LR_DECAY_AT = 0.6
"""Fraction of the epochs after which the learning rate drops 10× (SaoYan: epoch 30 of 50)."""


def model_config(model: nn.Module) -> dict:
    """``build_denoiser(**model_config(m))`` rebuilds ``m``'s architecture."""
    return {"model": model.name, **model.config}


def trained_net(model: nn.Module) -> nn.Module:
    """The convolutional network the loop trains (the subspace model's inner DnCNN)."""
    return model.denoiser if isinstance(model, DnCNNSubspace) else model


@dataclass
class DenoiseConfig:
    sigma: float = 30.0
    blind: bool = True
    sigma_range: tuple[float, float] = (0.0, 55.0)
    patch_size: int = 40
    batch_size: int = 16
    epochs: int = 20
    steps_per_epoch: int = 50
    lr: float = 1e-3
    early_stopping: int = 5
    seed: int = 0
    amp: bool = True
    val_patches: int = VAL_PATCHES

    def noise(self) -> dict:
        return {"sigma": self.sigma, "blind": self.blind, "sigma_range": list(self.sigma_range)}

    def levels(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        return noise_levels(n, self.sigma, self.sigma_range, self.blind, gen, device)


def config_dict(cfg: DenoiseConfig) -> dict:
    out = asdict(cfg)
    out["sigma_range"] = list(cfg.sigma_range)
    return out


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
    resumed_from: int = 0


def _augment(x: torch.Tensor, mode: int) -> torch.Tensor:
    """One of the 8 rotations/flips of the reference's ``data_augmentation``."""
    x = torch.rot90(x, mode % 4, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if mode >= 4 else x


def _channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """oneDNN's convolutions run about 2× faster in channels-last on CPU (bench/)."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


@torch.no_grad()
def recalibrate_batchnorm(
    net: nn.Module,
    draw: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    batches: int = BN_CALIBRATION_BATCHES,
    amp_ctx: Callable = contextlib.nullcontext,
) -> None:
    """Replace BatchNorm running statistics by their average over fresh noisy training batches.

    The exponential running averages lag the quickly moving weights early in training: after a
    few hundred steps eval-mode outputs were as noisy as the input while train-mode outputs were
    already clean. Averaging the statistics of the current weights ("precise BN") removes that
    gap; it costs ``batches`` forward passes. ``draw()`` returns a (noisy input, noise) batch.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for _ in range(batches):
        x, _ = draw()
        with amp_ctx():
            net.predict_noise(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def _val_psnr(net: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, bs: int, amp_ctx) -> float:
    """PSNR (dB, peak 1) of the denoised centre planes, from the MSE pooled over the patches."""
    net.eval()
    err = torch.zeros((), device=noisy.device, dtype=torch.float64)
    for start in range(0, noisy.shape[0], bs):
        sl = slice(start, start + bs)
        with amp_ctx():
            out = net(noisy[sl]).float()
        err += (out - clean[sl]).double().pow(2).sum()
    return _psnr_from_mse(err.item() / clean.numel())


def _check_config(cfg: DenoiseConfig) -> None:
    lo, hi = cfg.sigma_range
    if cfg.blind and not 0 <= lo <= hi:
        raise ParamsError(f"'denoise.sigma_range' = {[lo, hi]} must be [low, high], low <= high")


def _copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def train_denoiser(
    net: nn.Module,
    data: Planes,
    cfg: DenoiseConfig,
    *,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    state_file: str | os.PathLike | None = None,
    state_fingerprint: str = "",
    extra_state: dict | None = None,
) -> DenoiseResult:
    """Train ``net`` (a :class:`DnCNN` or :class:`DnCNNSpectral`) on the training planes ``data``.

    Adam with lr dropping 10× after :data:`LR_DECAY_AT` of the epochs; early stopping after
    ``cfg.early_stopping`` epochs without a better validation PSNR (0: off). The patch size
    shrinks to the planes' size when they are smaller. On CPU a fixed seed gives an identical run
    (also across a resume); bf16 autocast is used on CUDA, and on CPUs with native bf16, when
    ``cfg.amp``. With ``state_file``, each completed epoch writes a resume state (plus
    ``extra_state``, e.g. the MLflow run id) and a later call with the same
    ``state_fingerprint`` continues after it.
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
    generators = {"gen": gen, "bn": bn_gen, "cpu": cpu_gen}

    def amp_ctx():
        return autocast(device, cfg.amp, cpu=True)

    _, h, w = data.planes.shape
    size = min(cfg.patch_size, h, w)
    planes = torch.as_tensor(data.planes, dtype=torch.float32).to(device)
    table = torch.as_tensor(data.table, dtype=torch.long).to(device)

    def draw(g: torch.Generator, n: int = cfg.batch_size):
        x = sample_patches(planes, table, n, size, g)
        noise = noise_like(x, cfg.levels(n, g, device), g)
        return x + noise, noise[:, :1]

    val_noisy, val_noise = draw(val_gen, cfg.val_patches)
    val_noisy = _channels_last(val_noisy, device)
    val_clean = val_noisy[:, :1] - val_noise
    noisy_psnr = _psnr_from_mse(val_noise.double().pow(2).mean().item())

    net.to(device)
    if device.type == "cpu":
        net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    initial = _val_psnr(net, val_noisy, val_clean, cfg.batch_size, amp_ctx)
    decay_epoch = max(1, math.ceil(LR_DECAY_AT * cfg.epochs)) + 1
    best = DenoiseResult(
        state_dict=_copy(net.state_dict()),
        best_epoch=0,
        best_val_psnr=initial,
        initial_val_psnr=initial,
        noisy_val_psnr=noisy_psnr,
        patch_size=size,
    )
    history: list[dict] = []
    start, elapsed = 1, 0.0
    state = None
    if state_file is not None:
        state = load_state(state_file, fingerprint=state_fingerprint)
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], generators)
        history = list(state["history"])
        best.best_epoch = int(state["best_epoch"])
        best.best_val_psnr = float(state["best_val_psnr"])
        best.state_dict = dict(state["best_state_dict"])
        elapsed = float(state["elapsed_s"])
        start = int(state["epoch"]) + 1
        best.resumed_from = start
        log.info("resuming from epoch %d", start)
    t0 = time.perf_counter() - elapsed
    done_steps = 0
    bar = tqdm(
        total=(cfg.epochs - start + 1) * cfg.steps_per_epoch,
        desc=getattr(net, "name", "denoiser"),
        unit="step",
        disable=not progress,
    )
    for epoch in range(start, cfg.epochs + 1):
        if cfg.early_stopping and epoch - max(best.best_epoch, 1) > cfg.early_stopping:
            break
        lr = cfg.lr * (0.1 if cfg.epochs > 1 and epoch >= decay_epoch else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        net.train()
        loss_sum = torch.zeros((), device=device)
        for _ in range(cfg.steps_per_epoch):
            x, noise = draw(gen)
            mode = int(torch.randint(8, (1,), generator=cpu_gen))
            x, noise = _channels_last(_augment(x, mode), device), _augment(noise, mode)
            with amp_ctx():
                pred = net.predict_noise(x)
            loss = nn.functional.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            bar.update()
        done_steps += cfg.steps_per_epoch
        recalibrate_batchnorm(net, lambda: draw(bn_gen), amp_ctx=amp_ctx)
        val = _val_psnr(net, val_noisy, val_clean, cfg.batch_size, amp_ctx)
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
            best.state_dict = _copy(net.state_dict())
        bar.set_postfix(loss=f"{row['train_loss']:.2e}", psnr=f"{val:.2f}")
        if state_file is not None:
            save_state(
                state_file,
                {
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": capture_rng(generators),
                    "history": history,
                    "best_epoch": best.best_epoch,
                    "best_val_psnr": best.best_val_psnr,
                    "best_state_dict": best.state_dict,
                    "elapsed_s": time.perf_counter() - t0,
                    **(extra_state or {}),
                },
                fingerprint=state_fingerprint,
            )
        if on_epoch is not None:
            on_epoch(row)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best.wall_time_s = time.perf_counter() - t0
    run_s = best.wall_time_s - elapsed
    best.patches_per_s = done_steps * cfg.batch_size / run_s if run_s > 0 else 0.0
    best.history = history
    net.load_state_dict(best.state_dict)
    net.to(memory_format=torch.contiguous_format)
    return best


def save_denoiser(path, *, model: nn.Module, band_min, band_max, noise, split, meta, **prov):
    """The denoiser checkpoint (kind ``dncnn`` of :mod:`pipeline.training.checkpoint`);
    ``prov`` are its ``data_fingerprint`` and ``params``."""
    save_checkpoint(
        path,
        kind="dncnn",
        state_dict=model.state_dict(),
        model_config=model_config(model),
        band_min=np.asarray(band_min, np.float64),
        band_max=np.asarray(band_max, np.float64),
        noise=dict(noise),
        split=dict(split),
        meta=dict(meta),
        **prov,
    )


def load_denoiser(path, device="cpu") -> tuple[nn.Module, dict]:
    """The denoiser in eval mode on ``device`` and its checkpoint (band_min/max as numpy)."""
    ckpt = load_checkpoint(path, kind="dncnn")
    model = load_model(ckpt, device, build=lambda c: build_denoiser(**c["model_config"]))
    return model, ckpt
