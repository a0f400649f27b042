"""Patch classifiers: what the loop needs to train them, by patches or by tiles, and the
fitting of the classical baselines.

No DataLoader of pre-cut patches: the padded cube, the pixel coordinates and the labels live on
the device. ``batching="patches"`` gathers a batch of P×P patches by index (the paper's
Keras-code replica). ``batching="tiles"`` runs the model's shared, translation-equivariant layers
once over a tile's padded window and the per-pixel layers on each training pixel's window of
those maps (:meth:`HybridSNBase.forward_tile`): the same loss and gradients on the same pixels,
without recomputing the convolutions overlapping patches share. The training input shows only
what the split's training view allows (k-fold: the training blocks; the rest holds the padding
value 0), so no training window ever sees a validation or test pixel. ``augment: flips`` applies
one of the 8 rotations/flips per step to every window of the step (on the tile path by turning
the tile and its pixel coordinates, which is exact).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.data.patches import gather_patches, pad_cube
from pipeline.data.prepared import Prepared
from pipeline.evaluation.inference import pixel_logits
from pipeline.models import ModelSpec, Shape
from pipeline.training.common import seed_everything
from pipeline.training.loop import FitResult, fit

BATCHING = ("patches", "tiles", "auto")
AUGMENT_MODES = 8


def _masked(cube: torch.Tensor, view: np.ndarray | None) -> torch.Tensor:
    """The cube with the pixels outside ``view`` set to the padding value 0 (differentiable, so
    a test can check that no gradient reaches a hidden pixel)."""
    if view is None:
        return cube
    return cube * torch.as_tensor(view, dtype=cube.dtype, device=cube.device)[..., None]


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


def augment(x: torch.Tensor, mode: int) -> torch.Tensor:
    """One of the 8 rotations/flips of the last two axes (mode 0: unchanged)."""
    x = torch.rot90(x, mode % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if mode >= 4 else x


def augment_coords(rows, cols, height: int, width: int, mode: int):
    """Where pixels (rows, cols) of an h×w grid land when the grid is turned by ``mode``, and
    the turned grid's shape: the same transform applied to an index grid, inverted."""
    if mode == 0:
        return rows, cols, (height, width)
    grid = augment(torch.arange(height * width, device=rows.device).view(height, width), mode)
    inverse = torch.empty_like(grid.reshape(-1))
    inverse[grid.reshape(-1)] = torch.arange(grid.numel(), device=rows.device)
    flat = inverse[rows * width + cols]
    w2 = grid.shape[1]
    return flat // w2, flat % w2, tuple(grid.shape)


class ClassifierTask:
    """Cross-entropy on the training pixels (optionally label-smoothed and class-weighted),
    validation OA on the validation pixels through the one patch-inference loop (fp32)."""

    score = "val_oa"

    def __init__(
        self,
        model: nn.Module,
        data: Prepared,
        cfg: Any,
        *,
        seed: int,
        patch_size: int,
        padding: str,
        eval_batch: int,
        device: torch.device,
    ) -> None:
        self.cfg, self.p, self.eval_batch = cfg, patch_size, eval_batch
        self.mode = resolve_batching(model, cfg.batching)
        self.gen = torch.Generator()
        self.gen.manual_seed(seed)
        cube = torch.as_tensor(data.cube, dtype=torch.float32, device=device)
        self.cube = cube
        train_view, val_view = data.view("train"), data.view("val")
        self.padded = pad_cube(_masked(cube, train_view), patch_size, padding)
        self.val_padded = (
            self.padded.detach()
            if train_view is None and val_view is None
            else pad_cube(_masked(cube.detach(), val_view), patch_size, padding)
        )
        self.rows, self.cols, self.y = pixel_coords(data.train, data.labels, device)
        self.va_rows, self.va_cols, self.va_y = pixel_coords(data.val, data.labels, device)
        if self.rows.numel() == 0:
            raise ValueError("no training pixels")
        self.samples_per_epoch = int(self.rows.numel())
        self.height, self.width = data.labels.shape
        self.side = tile_side(patch_size, self.height, self.width, cfg.tile_size)
        n_classes = len(data.meta.get("class_names") or []) or int(data.labels.max())
        self.weight = None
        if cfg.class_weights == "balanced":
            counts = torch.bincount(self.y, minlength=n_classes).float()
            self.weight = torch.where(
                counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), 0
            )

    def generators(self) -> dict[str, torch.Generator]:
        return {"batches": self.gen}

    def batches(self, epoch: int):
        if self.mode == "tiles":
            steps = tile_plan(
                self.rows,
                self.cols,
                self.height,
                self.width,
                self.side,
                self.gen,
                self.cfg.tile_pixels,
            )
        else:
            perm = torch.randperm(self.samples_per_epoch, generator=self.gen)
            steps = list(torch.split(perm, self.cfg.batch_size))
        flips = self.cfg.augment == "flips"
        modes = torch.randint(AUGMENT_MODES, (len(steps),), generator=self.gen) if flips else None
        for i, step in enumerate(steps):
            yield step, int(modes[i]) if flips else 0

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        step, mode = batch
        padded = self.padded
        if self.mode == "tiles":
            idx = step.pixels.to(padded.device)
            logits = self._tile_logits(model, padded, step, idx, mode)
        else:
            idx = step.to(padded.device)
            patches = gather_patches(padded, self.rows[idx], self.cols[idx], self.p)
            logits = model(augment(patches, mode))
        target = self.y[idx]
        loss = nn.functional.cross_entropy(
            logits.float(), target, weight=self.weight, label_smoothing=self.cfg.label_smoothing
        )
        correct = (logits.argmax(1) == target).sum()
        return loss, {"loss_sum": loss.detach() * idx.numel(), "correct": correct}

    def _tile_logits(self, model, padded, step: TileStep, idx, mode: int) -> torch.Tensor:
        th, tw = self.side
        p = self.p
        windows = torch.stack(
            [padded[:, r0 : r0 + th + p - 1, c0 : c0 + tw + p - 1] for r0, c0 in step.starts]
        )
        tiles = step.tiles.to(padded.device)
        r0 = torch.tensor([r for r, _ in step.starts], device=padded.device)[tiles]
        c0 = torch.tensor([c for _, c in step.starts], device=padded.device)[tiles]
        rows, cols, _ = augment_coords(self.rows[idx] - r0, self.cols[idx] - c0, th, tw, mode)
        return model.forward_tile(augment(windows[:, None], mode), rows, cols, tiles)

    def train_row(self, sums: dict[str, float]) -> dict[str, float]:
        n = self.samples_per_epoch
        return {"train_loss": sums["loss_sum"] / n, "train_oa": sums["correct"] / n}

    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.va_rows.numel() == 0:
            return {}
        logits = pixel_logits(
            model, self.val_padded, self.va_rows, self.va_cols, self.p, self.eval_batch
        )
        return {
            "val_loss": nn.functional.cross_entropy(logits, self.va_y).item(),
            "val_oa": (logits.argmax(1) == self.va_y).float().mean().item(),
        }


def train_classifier(
    model: nn.Module,
    data: Prepared,
    cfg: Any,
    *,
    seed: int,
    patch_size: int,
    padding: str = "zero",
    eval_batch: int = 1024,
    device: torch.device | str = "cpu",
    amp: bool = True,
    store=None,
    on_epoch=None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` on ``data``'s training pixels with the loop; keep the best validation OA.

    ``cfg`` is the ``train`` section (epochs, lr, schedule, batching, augment, ...). On CPU a
    fixed seed gives an identical run, also across a resume from ``store``.
    """
    device = torch.device(device)
    seed_everything(seed, deterministic=device.type == "cpu")
    model.to(device)
    task = ClassifierTask(
        model,
        data,
        cfg,
        seed=seed,
        patch_size=patch_size,
        padding=padding,
        eval_batch=eval_batch,
        device=device,
    )
    result = fit(
        model,
        task,
        cfg,
        device=device,
        amp=amp,
        store=store,
        on_epoch=on_epoch,
        progress=progress,
        desc=getattr(model, "name", "train"),
    )
    result.batching = task.mode
    return result


def fit_classical(spec: ModelSpec, data: Prepared, *, seed: int) -> tuple[nn.Module, FitResult]:
    """Fit a classical baseline on the training pixels' features (``spec.features``: the full
    spectra for svm and rf, standardised by the model on the training pixels); the k-fold
    blocks group its inner cross-validation."""
    rows, cols = np.nonzero(data.train)
    groups = data.groups[rows, cols] if data.groups is not None else None
    t0 = time.perf_counter()
    model = spec.fit(
        data.features(spec.features)[rows, cols],
        data.labels[rows, cols] - 1,
        len(data.class_names),
        groups=groups,
        seed=seed,
    )
    seconds = time.perf_counter() - t0
    result = FitResult(
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        best_epoch=0,
        best_score=None,
        wall_time_s=seconds,
        samples_per_s=len(rows) / seconds if seconds > 0 else 0.0,
    )
    result.batching = "pixels"
    return model, result


def train_model(
    spec: ModelSpec,
    data: Prepared,
    params: Any,
    seed: int,
    *,
    device,
    store=None,
    on_epoch=None,
    progress: bool = True,
) -> tuple[nn.Module, FitResult]:
    """The one path from prepared data to a trained classifier, for the `train` stage and for
    every study cell: build from the registry and train with the loop, or fit a classical
    baseline."""
    device = torch.device(device)
    seed_everything(seed, deterministic=device.type == "cpu")  # the initial weights too
    if spec.fit is not None:
        return fit_classical(spec, data, seed=seed)
    shape = Shape(data.cube.shape[-1], len(data.class_names), params.patch.size)
    model = spec.build(shape, params)
    result = train_classifier(
        model,
        data,
        params.train,
        seed=seed,
        patch_size=params.patch.size,
        padding=params.patch.padding,
        eval_batch=params.inference.batch_size,
        device=device,
        amp=params.compute.amp,
        store=store,
        on_epoch=on_epoch,
        progress=progress,
    )
    return model, result
