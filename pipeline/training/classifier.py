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
    tile_size: int | None = None
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


TILE_HALOS = 10
"""Default tile side, in halos (P − 1): 240 pixels at P = 25, the whole of Indian Pines."""


def tile_side(patch_size: int, height: int, width: int, tile_size: int | None = None) -> tuple:
    """(rows, cols) of a tile: ``tile_size`` or, by default, ``TILE_HALOS``·(P − 1), within the
    scene.

    Large on purpose: a step takes random pixels of one tile, and pixels of a small tile have
    nearly the same patches, so a step of them teaches little more than a few pixels would.
    Measured on Indian Pines (README "Timings"): steps from 12×12 tiles reached 41 % validation
    OA after 5 epochs, random pixels of the whole scene 81 %.
    """
    side = tile_size or TILE_HALOS * (patch_size - 1)
    return min(side, height), min(side, width)


@dataclass
class TileStep:
    """One optimiser step: tiles of the scene and the training pixels that lie in them."""

    starts: list[tuple[int, int]]  # top-left scene pixel of each tile (all tiles equal in size)
    pixels: torch.Tensor  # indices into the training pixels
    tiles: torch.Tensor  # the tile (0 .. len(starts) - 1) of each of those pixels


def tile_plan(
    rows: torch.Tensor,
    cols: torch.Tensor,
    height: int,
    width: int,
    side: tuple[int, int],
    gen: torch.Generator,
    step_pixels: int,
) -> list[TileStep]:
    """One epoch's steps: a randomly offset tiling, its tiles shuffled and grouped into steps.

    The tiling moves by a random (dy, dx) each epoch, so tile borders move; every pixel falls in
    exactly one tile, tiles without training pixels are dropped, and tiles are added to a step
    until it holds at least ``step_pixels`` pixels. Drawing a step's tiles from all over the
    scene keeps its classes mixed, as a random batch of patches is. A tile holding more than
    ``step_pixels`` pixels is split at random into steps of that many (a tile as large as the
    scene thus gives the patch path's random batches). Tiles cut by the scene's border keep the
    full size by moving inwards (their own pixels are unchanged).
    """
    th, tw = side
    oy, ox = (
        int(torch.randint(t, (1,), generator=gen)) if t < n else 0
        for t, n in ((th, height), (tw, width))
    )
    r, c = rows.cpu(), cols.cpu()
    ty, tx = (r - oy + th) // th, (c - ox + tw) // tw
    n_tx = (width - ox + tw - 1) // tw + 1
    key = ty * n_tx + tx
    order = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    groups = list(zip(keys.tolist(), torch.split(order, counts.tolist()), strict=True))
    steps: list[TileStep] = []
    starts, members = [], []
    for i in torch.randperm(len(groups), generator=gen).tolist():
        k, idx = groups[i]
        y, x = divmod(k, n_tx)
        r0 = min(max(oy + (y - 1) * th, 0), height - th)
        c0 = min(max(ox + (x - 1) * tw, 0), width - tw)
        if idx.numel() > step_pixels:  # a large tile: random chunks, one step each
            idx = idx[torch.randperm(idx.numel(), generator=gen)]
            steps += [_step([(r0, c0)], [part]) for part in torch.split(idx, step_pixels)]
            continue
        starts.append((r0, c0))
        members.append(idx)
        if sum(m.numel() for m in members) >= step_pixels:
            steps.append(_step(starts, members))
            starts, members = [], []
    if members:
        steps.append(_step(starts, members))
    return [steps[i] for i in torch.randperm(len(steps), generator=gen).tolist()]


def _step(starts: list[tuple[int, int]], members: list[torch.Tensor]) -> TileStep:
    tiles = torch.cat([torch.full_like(m, t) for t, m in enumerate(members)])
    return TileStep(starts=list(starts), pixels=torch.cat(members), tiles=tiles)


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(cfg.epochs // 3, 1), gamma=0.1)
    return None


def _tile_logits(model, padded, step: TileStep, side, patch_size, rows, cols, idx):
    """The step's tile windows cut from the padded cube, then one tile pass over them."""
    th, tw = side
    windows = torch.stack(
        [
            padded[:, r0 : r0 + th + patch_size - 1, c0 : c0 + tw + patch_size - 1]
            for r0, c0 in step.starts
        ]
    )
    tiles = step.tiles.to(padded.device)
    r0 = torch.tensor([r for r, _ in step.starts], device=padded.device)[tiles]
    c0 = torch.tensor([c for _, c in step.starts], device=padded.device)[tiles]
    return model.forward_tile(windows[:, None], rows[idx] - r0, cols[idx] - c0, tiles)


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
    side = tile_side(patch_size, height, width, cfg.tile_size)

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
            steps = tile_plan(tr_rows, tr_cols, height, width, side, gen, cfg.tile_pixels)
        else:
            perm = torch.randperm(n_train, generator=gen)
            steps = [perm[s : s + cfg.batch_size] for s in range(0, n_train, cfg.batch_size)]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for step in steps:
            idx = (step.pixels if mode == "tiles" else step).to(device)
            target = tr_y[idx]
            with autocast(device, cfg.amp, cpu=True):
                if mode == "tiles":
                    logits = _tile_logits(
                        model, padded, step, side, patch_size, tr_rows, tr_cols, idx
                    )
                else:
                    logits = model(gather_patches(padded, tr_rows[idx], tr_cols[idx], patch_size))
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
