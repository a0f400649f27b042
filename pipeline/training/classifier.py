"""Patch classifier training on the device, by patches or by tiles.

No DataLoader of pre-cut patches: the padded cube, the pixel coordinates and the labels live on
the device. ``batching="patches"`` gathers a batch of P×P patches by index (the paper's
Keras-code replica). ``batching="tiles"`` cuts the scene into a randomly offset tiling each
epoch and takes one step per tile: the model's shared, translation-equivariant layers run once
over the tile's padded window and the per-pixel layers on each training pixel's window of those
maps (:meth:`HybridSNBase.forward_tile`). Both give the same loss and gradients on the same
pixels, but overlapping patches no longer recompute their shared convolutions, which is most of
the cost. The kept weights are those of the best validation OA (the reference notebook keeps
the best *training* accuracy, which leaks).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.data.patches import gather_patches, pad_cube
from pipeline.evaluation.inference import pixel_logits
from pipeline.training.checkpoint import capture_rng, restore_rng
from pipeline.training.common import autocast, seed_everything

BATCHING = ("patches", "tiles", "auto")


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
    batching: str = "auto"
    tile_pixels: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"
    early_stopping: int = 0
    amp: bool = True
    seed: int = 0
    eval_batch_size: int = 1024


@dataclass
class TrainResult:
    state_dict: dict
    best_epoch: int
    best_val_oa: float | None
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    samples_per_s: float = 0.0
    stopped_early: bool = False
    batching: str = "patches"
    resumed_from: int | None = None


def pixel_coords(mask: np.ndarray, labels: np.ndarray, device) -> tuple[torch.Tensor, ...]:
    """Rows, cols and 0-based class targets of the pixels in ``mask`` as device tensors."""
    rows, cols = np.nonzero(mask)
    y = labels[rows, cols] - 1
    to = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
    return to(rows), to(cols), to(y)


def supports_tiles(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_tile", None))


def resolve_batching(model: nn.Module, batching: str) -> str:
    """``auto`` → tiles where the model has a tile pass, else patches."""
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
    if batching == "auto":
        return "tiles" if supports_tiles(model) else "patches"
    if batching == "tiles" and not supports_tiles(model):
        raise ValueError(f"{type(model).__name__} has no tile pass; use batching='patches'")
    return batching


def tile_side(n_train: int, height: int, width: int, tile_pixels: int) -> int:
    """Side of square tiles that hold ``tile_pixels`` training pixels at the scene's density."""
    side = math.sqrt(tile_pixels * height * width / max(n_train, 1))
    return int(min(max(round(side), 1), max(height, width)))


def tile_plan(
    rows: torch.Tensor,
    cols: torch.Tensor,
    height: int,
    width: int,
    side: int,
    gen: torch.Generator,
    max_pixels: int | None = None,
) -> list[tuple[tuple[int, int, int, int], torch.Tensor]]:
    """One epoch's steps: ``((row0, row1, col0, col1), pixel indices)`` in random order.

    The tiling is offset by a random (dy, dx) in [0, side) each epoch, so tile borders move;
    every pixel falls in exactly one tile, and tiles without pixels are not returned. A tile
    holding more than ``max_pixels`` pixels is split into several steps over the same window.
    """
    oy, ox = (int(v) for v in torch.randint(side, (2,), generator=gen))
    r, c = rows.cpu(), cols.cpu()
    ty, tx = (r - oy + side) // side, (c - ox + side) // side
    n_tx = (width - ox + side - 1) // side + 1
    key = ty * n_tx + tx
    order = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    steps = []
    for k, idx in zip(keys.tolist(), torch.split(order, counts.tolist()), strict=True):
        y, x = divmod(k, n_tx)
        r0, c0 = max(oy + (y - 1) * side, 0), max(ox + (x - 1) * side, 0)
        bounds = (r0, min(oy + y * side, height), c0, min(ox + x * side, width))
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        chunk = max_pixels or idx.numel()
        steps += [(bounds, part) for part in torch.split(idx, chunk)]
    return [steps[i] for i in torch.randperm(len(steps), generator=gen).tolist()]


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(cfg.epochs // 3, 1), gamma=0.1)
    return None


def train_classifier(
    model: nn.Module,
    cube: np.ndarray,
    labels: np.ndarray,
    train_mask: np.ndarray,
    val_mask: np.ndarray,
    cfg: TrainConfig,
    *,
    patch_size: int,
    padding: str = "zero",
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    resume: dict | None = None,
    save_state: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train with Adam and cross-entropy; keep the weights of the best validation OA.

    ``save_state`` receives, after every epoch, everything needed to continue (weights,
    optimiser, schedule, RNG states, history, best so far); passing that dict back as
    ``resume`` continues from the next epoch, and on CPU ends identical to an uninterrupted run.
    Validation runs through the one fp32 patch-inference loop that test inference uses.
    """
    device = torch.device(device)
    gen = seed_everything(cfg.seed, deterministic=device.type == "cpu")
    model.to(device)
    padded = pad_cube(
        torch.as_tensor(cube, dtype=torch.float32, device=device), patch_size, padding
    )
    tr_rows, tr_cols, tr_y = pixel_coords(train_mask, labels, device)
    va_rows, va_cols, va_y = pixel_coords(val_mask, labels, device)
    n_train, has_val = tr_rows.numel(), va_rows.numel() > 0
    if n_train == 0:
        raise ValueError("no training pixels")

    mode = resolve_batching(model, cfg.batching)
    height, width = labels.shape
    side = tile_side(n_train, height, width, cfg.tile_pixels)

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sched = _schedule(opt, cfg)
    best = TrainResult(state_dict={}, best_epoch=0, best_val_oa=None)
    since_best, history, first, elapsed = 0, [], 1, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        if sched is not None:
            sched.load_state_dict(resume["scheduler"])
        restore_rng(resume["rng"], {"batches": gen})
        history, since_best = list(resume["history"]), int(resume["since_best"])
        best.best_epoch, best.best_val_oa = resume["best_epoch"], resume["best_val_oa"]
        best.state_dict = dict(resume["best_state_dict"])
        first, elapsed = int(resume["epoch"]) + 1, float(resume["elapsed_s"])
    t0 = time.perf_counter() - elapsed
    bar = tqdm(
        range(first, cfg.epochs + 1),
        desc="train",
        unit="epoch",
        initial=first - 1,
        total=cfg.epochs,
        disable=not progress,
    )
    for epoch in bar:
        model.train()
        if mode == "tiles":
            steps = tile_plan(
                tr_rows, tr_cols, height, width, side, gen, max_pixels=2 * cfg.tile_pixels
            )
        else:
            perm = torch.randperm(n_train, generator=gen)
            steps = [
                (None, perm[s : s + cfg.batch_size]) for s in range(0, n_train, cfg.batch_size)
            ]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for bounds, idx in steps:
            idx = idx.to(device)
            target = tr_y[idx]
            with autocast(device, cfg.amp, cpu=True):
                if bounds is None:
                    logits = model(gather_patches(padded, tr_rows[idx], tr_cols[idx], patch_size))
                else:
                    r0, r1, c0, c1 = bounds
                    window = padded[:, r0 : r1 + patch_size - 1, c0 : c1 + patch_size - 1]
                    logits = model.forward_tile(
                        window[None, None], tr_rows[idx] - r0, tr_cols[idx] - c0
                    )
            loss = nn.functional.cross_entropy(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * idx.numel()
            correct += (logits.argmax(1) == target).sum()
        if sched is not None:
            sched.step()
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / n_train,
            "train_oa": correct.item() / n_train,
            "lr": opt.param_groups[0]["lr"],
        }
        if has_val:
            logits = pixel_logits(model, padded, va_rows, va_cols, patch_size, cfg.eval_batch_size)
            row["val_loss"] = nn.functional.cross_entropy(logits, va_y).item()
            row["val_oa"] = (logits.argmax(1) == va_y).float().mean().item()
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
        score = row["val_oa"] if has_val else None
        if not has_val or best.best_val_oa is None or score > best.best_val_oa:
            best.best_val_oa, best.best_epoch, since_best = score, epoch, 0
            best.state_dict = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
        else:
            since_best += 1
        bar.set_postfix(
            loss=f"{row['train_loss']:.3f}",
            oa=f"{row['train_oa']:.3f}",
            val=f"{row.get('val_oa', float('nan')):.3f}",
        )
        if on_epoch is not None:
            on_epoch(row)
        stop = bool(cfg.early_stopping and has_val and since_best >= cfg.early_stopping)
        if save_state is not None:
            save_state(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else {},
                    "rng": capture_rng({"batches": gen}),
                    "history": history,
                    "since_best": since_best,
                    "best_epoch": best.best_epoch,
                    "best_val_oa": best.best_val_oa,
                    "best_state_dict": best.state_dict,
                    "elapsed_s": time.perf_counter() - t0,
                }
            )
        if stop:
            best.stopped_early = True
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best.wall_time_s = time.perf_counter() - t0
    best.samples_per_s = n_train * len(history) / best.wall_time_s
    best.history = history
    best.batching = mode
    best.resumed_from = first if resume is not None else None
    model.load_state_dict(copy.deepcopy(best.state_dict))
    return best
