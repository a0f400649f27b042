"""Patch access for patch-based classifiers, without materialising a patch per pixel.

A cube (H, W, K) is padded once into a channels-first array (K, H + 2r, W + 2r), r = P // 2.
The P x P patch centred at scene pixel (r0, c0) is then ``padded[:, r0:r0 + P, c0:c0 + P]``,
and :func:`gather_patches` copies only the patches asked for, in one vectorised indexing call.
NumPy and torch inputs are both accepted; torch tensors stay on their device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pipeline.errors import DataError, ParamsError

PAD_MODES = ("zero", "reflect")


def _check_patch_size(patch_size: Any) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
        raise ParamsError(f"patch_size must be an odd positive integer, got {patch_size!r}")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ParamsError(f"patch_size must be an odd positive integer, got {patch_size}")
    return int(patch_size)


def _reflect_index(n: int, r: int) -> np.ndarray:
    """Source index of each padded position under numpy 'reflect' (edge not repeated)."""
    idx = np.abs(np.arange(-r, n + r))
    return np.where(idx > n - 1, 2 * (n - 1) - idx, idx)


def pad_cube(cube: np.ndarray | torch.Tensor, patch_size: int, mode: str = "zero"):
    """Pad a (H, W, K) cube by r = patch_size // 2 on each side and make it channels-first.

    Returns a contiguous (K, H + 2r, W + 2r) array of the same library, device and dtype.
    ``mode="zero"`` pads with zeros as the HybridSN paper does; ``mode="reflect"`` mirrors
    without repeating the edge pixel (numpy 'reflect', torch 'reflect') and needs r < H and
    r < W.
    """
    p = _check_patch_size(patch_size)
    if mode not in PAD_MODES:
        raise ParamsError(f"mode must be one of {PAD_MODES}, got {mode!r}")
    if cube.ndim != 3:
        raise DataError(f"cube must have shape (H, W, K), got shape {tuple(cube.shape)}")
    h, w, k = (int(s) for s in cube.shape)
    r = p // 2
    if mode == "reflect" and (r >= h or r >= w):
        raise ParamsError(
            f"patch_size={p} is too large for reflect padding of a {h}x{w} scene "
            f"(needs patch_size // 2 < {min(h, w)})"
        )
    is_torch = isinstance(cube, torch.Tensor)
    if mode == "zero":
        if is_torch:
            out = torch.zeros((k, h + 2 * r, w + 2 * r), dtype=cube.dtype, device=cube.device)
            out[:, r : r + h, r : r + w] = cube.permute(2, 0, 1)
        else:
            out = np.zeros((k, h + 2 * r, w + 2 * r), dtype=cube.dtype)
            out[:, r : r + h, r : r + w] = np.moveaxis(cube, 2, 0)
        return out
    ri, ci = _reflect_index(h, r), _reflect_index(w, r)
    if is_torch:
        ri_t = torch.from_numpy(ri).to(cube.device)
        ci_t = torch.from_numpy(ci).to(cube.device)
        return cube.index_select(0, ri_t).index_select(1, ci_t).permute(2, 0, 1).contiguous()
    return np.ascontiguousarray(np.moveaxis(cube[np.ix_(ri, ci)], 2, 0))


def _as_index(values: Any, like: np.ndarray | torch.Tensor, name: str):
    if isinstance(like, torch.Tensor):
        idx = torch.as_tensor(values, device=like.device)
        bad = idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool
        if idx.numel() and bad:
            raise DataError(f"{name} must hold integers, got dtype {idx.dtype}")
        return idx.reshape(-1).to(torch.int64)
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    idx = np.asarray(values)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{name} must hold integers, got dtype {idx.dtype}")
    return idx.reshape(-1).astype(np.intp, copy=False)


def _scene_shape(padded, p: int) -> tuple[int, int]:
    if padded.ndim != 3:
        raise DataError(
            f"padded must have shape (K, H + P - 1, W + P - 1), got {tuple(padded.shape)}"
        )
    h, w = int(padded.shape[1]) - (p - 1), int(padded.shape[2]) - (p - 1)
    if h < 1 or w < 1:
        raise DataError(f"padded shape {tuple(padded.shape)} is too small for patch_size={p}")
    return h, w


def _check_range(idx, n: int, name: str) -> None:
    if len(idx) == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        raise DataError(f"{name} must lie in [0, {n - 1}], got values in [{lo}, {hi}]")


def gather_patches(padded, rows, cols, patch_size: int, *, check: bool = True):
    """Return the (N, 1, K, P, P) patches centred at scene pixels (rows[i], cols[i]).

    ``padded`` comes from :func:`pad_cube`; ``rows``/``cols`` are coordinates in the unpadded
    scene. NumPy in gives NumPy out; a torch tensor gives a tensor on its own device (coordinates
    are moved there, patches never leave it). The copy is one advanced-indexing call on a
    sliding-window view, so memory is only the N patches. ``check`` validates the coordinate
    range (a host sync for CUDA tensors; out-of-range indices would otherwise wrap or assert).
    """
    p = _check_patch_size(patch_size)
    h, w = _scene_shape(padded, p)
    ri, ci = _as_index(rows, padded, "rows"), _as_index(cols, padded, "cols")
    if ri.shape != ci.shape:
        raise DataError(f"rows and cols differ in length: {ri.shape[0]} != {ci.shape[0]}")
    if check:
        _check_range(ri, h, "rows")
        _check_range(ci, w, "cols")
    k = int(padded.shape[0])
    if isinstance(padded, torch.Tensor):
        if padded.device.type == "cpu" and not padded.requires_grad and _numpy_dtype(padded):
            out = _gather_numpy(padded.numpy(), ri.numpy(), ci.numpy(), p)
            return torch.from_numpy(out)
        view = padded.unfold(1, p, 1).unfold(2, p, 1).permute(1, 2, 0, 3, 4)
        return view[ri, ci].reshape(-1, 1, k, p, p)
    return _gather_numpy(np.asarray(padded), ri, ci, p)


def _numpy_dtype(t: torch.Tensor) -> bool:
    return t.dtype not in (torch.bfloat16, torch.complex32) and not t.dtype.is_complex


def _gather_numpy(padded: np.ndarray, ri: np.ndarray, ci: np.ndarray, p: int) -> np.ndarray:
    """Gather through a sliding-window view: on CPU this is faster than torch indexing."""
    k = padded.shape[0]
    view = np.lib.stride_tricks.sliding_window_view(padded, (p, p), axis=(1, 2))
    return view.transpose(1, 2, 0, 3, 4)[ri, ci].reshape(-1, 1, k, p, p)


def iter_patch_batches(
    padded, rows, cols, patch_size: int, batch_size: int
) -> Iterator[tuple[int, Any]]:
    """Yield ``(start, patches)`` for consecutive slices of at most ``batch_size`` coordinates.

    ``patches`` holds the patches of coordinates ``start .. start + len(patches) - 1`` in input
    order, so memory stays bounded by one batch however many pixels are classified.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ParamsError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise ParamsError(f"batch_size must be a positive integer, got {batch_size}")
    p = _check_patch_size(patch_size)
    h, w = _scene_shape(padded, p)
    ri, ci = _as_index(rows, padded, "rows"), _as_index(cols, padded, "cols")
    if ri.shape != ci.shape:
        raise DataError(f"rows and cols differ in length: {ri.shape[0]} != {ci.shape[0]}")
    _check_range(ri, h, "rows")
    _check_range(ci, w, "cols")
    for start in range(0, int(ri.shape[0]), int(batch_size)):
        stop = start + int(batch_size)
        yield start, gather_patches(padded, ri[start:stop], ci[start:stop], p, check=False)
