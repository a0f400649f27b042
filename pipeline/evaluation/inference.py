"""Whole-scene classification: every pixel, labelled or not, borders included.

Models whose trunk is translation-equivariant run as one fully-convolutional pass over the padded
cube (exactly the patch logits; processed in row strips with a halo to bound memory). Models
whose head pools over the whole window (squeeze-and-excitation) share their 3-D convolutions the
same way and run the rest per pixel; any other model classifies batches of patches gathered on
the device by :func:`pixel_logits`, the one patch-inference loop, which validation during
training uses too. No all-pixels patch array is built, and inference is always fp32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.data.patches import iter_patch_batches, pad_cube


@dataclass
class ScenePrediction:
    labels: np.ndarray  # (H, W) int64, classes 1..C
    seconds: float
    method: str  # "dense", "shared" or "patches"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fp32(device: torch.device):
    """Autocast off, even inside a caller's autocast region: inference is always fp32."""
    return torch.autocast(device.type, enabled=False)


@torch.inference_mode()
def pixel_logits(
    model: nn.Module,
    padded: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    patch_size: int,
    batch_size: int,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """fp32 logits ``(N, C)`` of the pixels ``(rows[i], cols[i])``, in batches of patches.

    The one patch-inference loop: validation during training, the patch path of a scene pass
    and the benchmarks all use it, so a pixel gets the same prediction whichever of them asks.
    ``padded`` is the channels-first cube from :func:`pipeline.data.patches.pad_cube`; patches
    are gathered on its device, one batch at a time. Always fp32 (autocast is switched off even
    inside a caller's autocast region), so validation OA, which picks the checkpoint, and test
    OA are measured at the same precision.
    """
    model.eval()
    n = len(rows)
    out: list[torch.Tensor] = []
    batches = iter_patch_batches(padded, rows, cols, patch_size, batch_size)
    total = -(-n // int(batch_size)) if n else 0
    with _fp32(padded.device):
        for _, x in tqdm(batches, total=total, desc="patches", unit="batch", disable=not progress):
            out.append(model(x).float())
    if not out:
        return torch.empty((0, 0), dtype=torch.float32, device=padded.device)
    return torch.cat(out)


@torch.inference_mode()
def shared_trunk_logits(
    model: nn.Module, padded: torch.Tensor, strip_rows: int, batch_size: int
) -> torch.Tensor:
    """Logits (C, H, W) from one pass of the model's translation-equivariant part per strip of
    ``strip_rows`` output rows, then its per-pixel head on ``batch_size`` pixels at a time.

    For models with no exact dense pass (squeeze-and-excitation pools over each window): the
    3-D convolutions, most of the work, are shared between neighbouring pixels; the result
    equals the patch path's.
    """
    p = model.patch_size
    h, w = padded.shape[1] - p + 1, padded.shape[2] - p + 1
    strips = []
    for r0 in range(0, h, strip_rows):
        r1 = min(r0 + strip_rows, h)
        maps = model.shared_features(padded[None, None, :, r0 : r1 + p - 1])
        rows, cols = torch.meshgrid(
            torch.arange(r1 - r0, device=padded.device),
            torch.arange(w, device=padded.device),
            indexing="ij",
        )
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        tiles = torch.zeros_like(rows)
        out = [
            model.pixel_head(
                model.feature_windows(
                    maps,
                    rows[i : i + batch_size],
                    cols[i : i + batch_size],
                    tiles[i : i + batch_size],
                )
            ).float()
            for i in range(0, len(rows), batch_size)
        ]
        strips.append(torch.cat(out).T.reshape(-1, r1 - r0, w))
    return torch.cat(strips, dim=1)


@torch.inference_mode()
def scene_logits(
    model: nn.Module,
    padded: torch.Tensor,
    patch_size: int,
    *,
    dense: bool = True,
    strip_rows: int = 256,
    batch_size: int = 1024,
    progress: bool = False,
) -> tuple[torch.Tensor, str]:
    """fp32 logits (C, H, W) of every scene pixel from the padded channels-first cube.

    Dense models run fully convolutionally in strips of ``strip_rows`` output rows (a halo is
    added automatically); models with a shared trunk but a per-window head (SE) through
    :func:`shared_trunk_logits`; the others through :func:`pixel_logits`.
    """
    model.eval()
    h, w = padded.shape[1] - patch_size + 1, padded.shape[2] - patch_size + 1
    if dense and getattr(model, "supports_dense", False):
        with _fp32(padded.device):
            logits = model.forward_dense(padded[None, None], chunk_rows=strip_rows)[0]
        return logits.float(), "dense"
    if dense and hasattr(model, "feature_windows"):
        with _fp32(padded.device):
            return shared_trunk_logits(model, padded, strip_rows, batch_size), "shared"
    rows, cols = torch.meshgrid(
        torch.arange(h, device=padded.device), torch.arange(w, device=padded.device), indexing="ij"
    )
    logits = pixel_logits(
        model, padded, rows.reshape(-1), cols.reshape(-1), patch_size, batch_size, progress=progress
    )
    return logits.T.reshape(-1, h, w), "patches"


def predict_scene(
    model: nn.Module,
    cube: np.ndarray,
    patch_size: int,
    *,
    padding: str = "zero",
    device: torch.device | str = "cpu",
    dense: bool = True,
    strip_rows: int = 256,
    batch_size: int = 1024,
    progress: bool = False,
) -> ScenePrediction:
    """Class map (H, W) with labels 1..C for a PCA-reduced cube (H, W, K), timed end to end."""
    device = torch.device(device)
    model = model.to(device).eval()
    _sync(device)
    t0 = time.perf_counter()
    padded = pad_cube(
        torch.as_tensor(cube, dtype=torch.float32, device=device), patch_size, padding
    )
    logits, method = scene_logits(
        model,
        padded,
        patch_size,
        dense=dense,
        strip_rows=strip_rows,
        batch_size=batch_size,
        progress=progress,
    )
    labels = (logits.argmax(0) + 1).cpu().numpy().astype(np.int64)
    _sync(device)
    return ScenePrediction(labels=labels, seconds=time.perf_counter() - t0, method=method)
