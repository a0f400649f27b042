"""Patch classifier training with batches gathered on the device from the padded cube.

No DataLoader of pre-cut patches: the padded cube, the pixel coordinates and the labels live on
the device, and each batch is gathered there by index. The kept weights are those of the best
validation OA (the reference notebook keeps the best *training* accuracy, which leaks).
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
from pipeline.training.common import autocast, seed_everything


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
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


def pixel_coords(mask: np.ndarray, labels: np.ndarray, device) -> tuple[torch.Tensor, ...]:
    """Rows, cols and 0-based class targets of the pixels in ``mask`` as device tensors."""
    rows, cols = np.nonzero(mask)
    y = labels[rows, cols] - 1
    to = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
    return to(rows), to(cols), to(y)


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(cfg.epochs // 3, 1), gamma=0.1)
    return None


@torch.no_grad()
def evaluate_pixels(
    model: nn.Module,
    padded: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    y: torch.Tensor | None,
    patch_size: int,
    batch_size: int,
    amp: bool = True,
) -> tuple[torch.Tensor, float]:
    """Predicted classes (0-based) of the given pixels and, if ``y`` is given, the mean loss."""
    model.eval()
    preds, loss_sum = [], 0.0
    for start in range(0, rows.numel(), batch_size):
        sl = slice(start, start + batch_size)
        x = gather_patches(padded, rows[sl], cols[sl], patch_size)
        with autocast(padded.device, amp):
            logits = model(x).float()
        if y is not None:
            loss_sum += nn.functional.cross_entropy(logits, y[sl], reduction="sum").item()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=padded.device)
    return pred, loss_sum / max(rows.numel(), 1)


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
) -> TrainResult:
    """Train with Adam and cross-entropy; keep the weights of the best validation OA."""
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

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, cfg)
    best = TrainResult(state_dict={}, best_epoch=0, best_val_oa=None)
    since_best, history = 0, []
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n_train, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for start in range(0, n_train, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            x = gather_patches(padded, tr_rows[idx], tr_cols[idx], patch_size)
            target = tr_y[idx]
            with autocast(device, cfg.amp):
                logits = model(x)
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
            "train_acc": correct.item() / n_train,
            "lr": opt.param_groups[0]["lr"],
        }
        if has_val:
            pred, val_loss = evaluate_pixels(
                model, padded, va_rows, va_cols, va_y, patch_size, cfg.eval_batch_size, cfg.amp
            )
            row["val_loss"] = val_loss
            row["val_acc"] = (pred == va_y).float().mean().item()
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
        score = row["val_acc"] if has_val else None
        if not has_val or best.best_val_oa is None or score > best.best_val_oa:
            best.best_val_oa, best.best_epoch, since_best = score, epoch, 0
            best.state_dict = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
        else:
            since_best += 1
        bar.set_postfix(
            loss=f"{row['train_loss']:.3f}",
            acc=f"{row['train_acc']:.3f}",
            val=f"{row.get('val_acc', float('nan')):.3f}",
        )
        if on_epoch is not None:
            on_epoch(row)
        if cfg.early_stopping and has_val and since_best >= cfg.early_stopping:
            best.stopped_early = True
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best.wall_time_s = time.perf_counter() - t0
    best.samples_per_s = n_train * len(history) / best.wall_time_s
    best.history = history
    model.load_state_dict(copy.deepcopy(best.state_dict))
    return best
