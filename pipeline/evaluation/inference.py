"""Whole-scene classification: every pixel, labelled or not, borders included.

Models whose trunk is translation-equivariant run as one fully-convolutional pass over the padded
cube (exactly the patch logits; processed in row strips with a halo to bound memory); the others
(squeeze-and-excitation pools over the whole window) classify batches of patches gathered on the
device. Either way no all-pixels patch array is built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.data.patches import gather_patches, pad_cube


@dataclass
class ScenePrediction:
    labels: np.ndarray  # (H, W) int64, classes 1..C
    seconds: float
    method: str  # "dense" or "patches"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def scene_logits(
    model: nn.Module,
    padded: torch.Tensor,
    patch_size: int,
    *,
    dense: bool = True,
    tile: int = 256,
    batch_size: int = 1024,
    progress: bool = False,
) -> tuple[torch.Tensor, str]:
    """Logits (C, H, W) of every scene pixel from the padded channels-first cube (K, Hp, Wp)."""
    model.eval()
    h, w = padded.shape[1] - patch_size + 1, padded.shape[2] - patch_size + 1
    if dense and getattr(model, "supports_dense", False):
        logits = model.forward_dense(padded[None, None], chunk_rows=tile)[0]
        return logits.float(), "dense"
    rows, cols = torch.meshgrid(
        torch.arange(h, device=padded.device), torch.arange(w, device=padded.device), indexing="ij"
    )
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    out = []
    starts = range(0, rows.numel(), batch_size)
    for start in tqdm(starts, desc="scene", unit="batch", disable=not progress):
        x = gather_patches(
            padded, rows[start : start + batch_size], cols[start : start + batch_size], patch_size
        )
        out.append(model(x).float())
    return torch.cat(out).T.reshape(-1, h, w), "patches"


def predict_scene(
    model: nn.Module,
    cube: np.ndarray,
    patch_size: int,
    *,
    padding: str = "zero",
    device: torch.device | str = "cpu",
    dense: bool = True,
    tile: int = 256,
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
        model, padded, patch_size, dense=dense, tile=tile, batch_size=batch_size, progress=progress
    )
    labels = (logits.argmax(0) + 1).cpu().numpy().astype(np.int64)
    _sync(device)
    return ScenePrediction(labels=labels, seconds=time.perf_counter() - t0, method=method)
