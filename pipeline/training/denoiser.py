"""Denoisers: what the loop needs to train them, and their checkpoint.

Data (rows, scaling, noise) come from :mod:`pipeline.training.denoise_data`, the training planes
from the model (:meth:`training_planes`). Each step draws ``batch_size`` random patches of the
training planes on the device, turned by one of the 8 rotations/flips of the DnCNN reference,
adds noise of a fixed σ or, for blind training, of a σ drawn per patch, and minimises the MSE
between the predicted and the true noise of the centre plane (residual learning). After each
epoch the BatchNorm statistics are recalibrated, and the PSNR of a fixed noisy validation set
(patches of the same training rows, their own seed) is the score the loop keeps weights by.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import DataError
from pipeline.io import sha256_file
from pipeline.models import Shape
from pipeline.models.dncnn import Planes
from pipeline.training.checkpoint import (
    check_checkpoint_provenance,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from pipeline.training.common import autocast, seed_everything
from pipeline.training.denoise_data import (
    RowSplit,
    check_scene,
    noise_levels,
    noise_like,
    row_split,
    sample_patches,
    scale_bands,
    training_scaling,
)
from pipeline.training.loop import FitResult, fit

BN_CALIBRATION_BATCHES = 8
"""Batches whose BatchNorm statistics replace the running averages before each validation."""


def noise_record(cfg: Any) -> dict:
    """The training noise as stored in a checkpoint."""
    return {"sigma": cfg.sigma, "blind": cfg.blind, "sigma_range": list(cfg.sigma_range)}


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


def psnr_from_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


class DenoiserTask:
    """Noise-prediction MSE on random training patches; validation PSNR on a fixed noisy set."""

    score = "val_psnr"

    def __init__(
        self, net: nn.Module, data: Planes, cfg: Any, *, device: torch.device, amp: bool
    ) -> None:
        self.cfg, self.device, self.amp = cfg, device, amp
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg.seed)
        self.bn_gen = torch.Generator(device=device)
        self.bn_gen.manual_seed(cfg.seed + 2_000_003)
        self.cpu_gen = torch.Generator()
        self.cpu_gen.manual_seed(cfg.seed)
        val_gen = torch.Generator(device=device)
        val_gen.manual_seed(cfg.seed + 1_000_003)
        _, h, w = data.planes.shape
        self.size = min(cfg.patch_size, h, w)
        self.planes = torch.as_tensor(data.planes, dtype=torch.float32).to(device)
        self.table = torch.as_tensor(data.table, dtype=torch.long).to(device)
        val_noisy, val_noise = self.draw(val_gen, cfg.val_patches)
        self.val_noisy = _channels_last(val_noisy, device)
        self.val_clean = self.val_noisy[:, :1] - val_noise
        self.noisy_psnr = psnr_from_mse(val_noise.double().pow(2).mean().item())
        self.samples_per_epoch = cfg.steps_per_epoch * cfg.batch_size
        self.initial_psnr = self.val_psnr(net)

    def amp_ctx(self):
        return autocast(self.device, self.amp, cpu=True)

    def draw(self, g: torch.Generator, n: int | None = None):
        n = n or self.cfg.batch_size
        x = sample_patches(self.planes, self.table, n, self.size, g)
        sigmas = noise_levels(n, self.cfg.sigma, self.cfg.sigma_range, self.cfg.blind, g, x.device)
        noise = noise_like(x, sigmas, g)
        return x + noise, noise[:, :1]

    def generators(self) -> dict[str, torch.Generator]:
        return {"gen": self.gen, "bn": self.bn_gen, "cpu": self.cpu_gen}

    def batches(self, epoch: int):
        for _ in range(self.cfg.steps_per_epoch):
            x, noise = self.draw(self.gen)
            mode = int(torch.randint(8, (1,), generator=self.cpu_gen))
            yield _channels_last(_augment(x, mode), self.device), _augment(noise, mode)

    def loss(self, net: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, noise = batch
        loss = nn.functional.mse_loss(net.predict_noise(x).float(), noise)
        return loss, {"loss_sum": loss.detach()}

    def train_row(self, sums: dict[str, float]) -> dict[str, float]:
        return {"train_loss": sums["loss_sum"] / self.cfg.steps_per_epoch}

    @torch.no_grad()
    def val_psnr(self, net: nn.Module) -> float:
        """PSNR (dB, peak 1) of the denoised centre planes, from the MSE pooled over patches."""
        net.eval()
        err = torch.zeros((), device=self.device, dtype=torch.float64)
        bs = self.cfg.batch_size
        for start in range(0, self.val_noisy.shape[0], bs):
            sl = slice(start, start + bs)
            with self.amp_ctx():
                out = net(self.val_noisy[sl]).float()
            err += (out - self.val_clean[sl]).double().pow(2).sum()
        return psnr_from_mse(err.item() / self.val_clean.numel())

    def validate(self, net: nn.Module) -> dict[str, float]:
        recalibrate_batchnorm(net, lambda: self.draw(self.bn_gen), amp_ctx=self.amp_ctx)
        return {"val_psnr": self.val_psnr(net)}


def train_denoiser(
    net: nn.Module,
    data: Planes,
    cfg: Any,
    *,
    device: torch.device | str = "cpu",
    amp: bool = True,
    store=None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``net`` (a DnCNN, or a model's :attr:`trainable_net`) on the planes ``data``.

    ``cfg`` is the ``denoise`` section (sigma, blind, sigma_range, patch_size, batch_size,
    epochs, steps_per_epoch, lr, schedule, early_stopping, seed). The patch size shrinks to the
    planes' size when they are smaller. On CPU a fixed seed gives an identical run, also across
    a resume from ``store``. ``result.extra`` holds ``initial_val_psnr``, ``noisy_val_psnr``
    and the ``patch_size`` used.
    """
    device = torch.device(device)
    seed_everything(cfg.seed, deterministic=device.type == "cpu")
    net.to(device)
    if device.type == "cpu":
        net.to(memory_format=torch.channels_last)
    task = DenoiserTask(net, data, cfg, device=device, amp=amp)
    result = fit(
        net,
        task,
        cfg,
        device=device,
        amp=amp,
        store=store,
        on_epoch=on_epoch,
        progress=progress,
        desc=getattr(net, "name", "denoiser"),
    )
    net.to(memory_format=torch.contiguous_format)
    result.extra = {
        "initial_val_psnr": task.initial_psnr,
        "noisy_val_psnr": task.noisy_psnr,
        "patch_size": task.size,
    }
    return result


def save_denoiser(path, *, model: nn.Module, band_min, band_max, noise, split, meta, **prov):
    """The denoiser checkpoint (kind ``dncnn`` of :mod:`pipeline.training.checkpoint`);
    ``prov`` are its ``data_fingerprint`` and ``params``."""
    save_checkpoint(
        path,
        kind="dncnn",
        state_dict=model.state_dict(),
        model_config=model.config,
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
    return load_model(ckpt, device), ckpt


def recorded_params(dp: Any, model: nn.Module, amp: bool) -> dict:
    """What a denoiser's training depends on besides the data (checkpoint and resume state)."""
    skip = ("models", "eval_sigmas", "robustness_sigmas", "robustness_model", "robustness_seed")
    kept = {k: v for k, v in dp.to_dict().items() if k not in skip}
    return {**kept, "model_config": dict(model.config), "amp": amp}


@dataclass
class DenoiserSetup:
    """A denoiser ready to train: the model fitted to the clean training rows (subspace, rank),
    those rows, the row split, their band scaling and the parameters its training depends on."""

    model: nn.Module
    clean: np.ndarray
    split: RowSplit
    scaling: tuple[np.ndarray, np.ndarray]
    recorded: dict


def setup_denoiser(spec: Any, cube: np.ndarray, params: Any) -> DenoiserSetup:
    """The row split, the training rows' band scaling, and the model built from the registry and
    fitted to the clean training rows: everything before the loop, for `denoise_train`."""
    dp = params.denoise
    split = row_split(cube.shape[0], dp.test_fraction)
    lo, hi = training_scaling(cube, split)
    clean = scale_bands(cube[split.train], lo, hi)
    seed_everything(dp.seed)
    model = spec.build(Shape(bands=cube.shape[-1]), params)
    model.fit_to(clean)
    return DenoiserSetup(
        model, clean, split, (lo, hi), recorded_params(dp, model, params.compute.amp)
    )


def load_denoisers(
    paths: dict[str, Any], cube: np.ndarray, raw_fp: str, *, raw_dir: str, device="cpu"
) -> tuple[dict, dict]:
    """The denoisers at ``paths`` (name → checkpoint) and their checkpoints (with ``sha256``),
    after checking that each was trained on this raw scene (``raw_fp`` of ``raw_dir``) and that
    all share the training rows and band scaling."""
    models, ckpts, first = {}, {}, None
    for name, path in paths.items():
        ckpt = load_checkpoint(path, kind="dncnn")
        check_checkpoint_provenance(
            ckpt, raw_fp, against=raw_dir, fix=f"hsi denoise_train --model {name}"
        )
        split = check_scene(cube, ckpt)
        model = load_model(ckpt, device)
        ckpt["sha256"] = sha256_file(ckpt["path"])
        first = first or ckpt
        same = split.to_dict() == first["split"] and all(
            np.array_equal(ckpt[k], first[k]) for k in ("band_min", "band_max")
        )
        if not same:
            raise DataError(
                f"{ckpt['path']}: trained on other rows or scaling than {first['path']}; "
                "run `hsi denoise_train` for every model again"
            )
        models[name], ckpts[name] = model, ckpt
    return models, ckpts
