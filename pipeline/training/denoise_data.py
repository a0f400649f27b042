"""What the denoisers learn from: the spatial row split, the per-band scaling (from the training
rows only), the noise, and random training patches (each model makes its own training planes).

Clean data are the raw cube's bands mapped to [0, 1] by each band's min/max **over the training
rows** (:func:`training_scaling`); the held-out rows are scaled with the same numbers (so they may
fall slightly outside [0, 1]) and play no part in any fitted quantity. Noise is additive white
Gaussian with σ in /255 units as in the denoising literature (σ = 10, 30, 50 → 10/255, …), fixed
or, for blind training, drawn per patch from a range.

Spatial split (:func:`row_split`): the bottom ``test_fraction`` of the scene's rows is the held-out
test region, the :data:`GAP_ROWS` rows above it are used by nobody, and training (including the
validation patches) uses only the rows above the gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.fetching import load_raw
from pipeline.errors import DataError, ParamsError
from pipeline.provenance import raw_fingerprint

GAP_ROWS = 4
"""Rows between the training and the test region that neither uses, so no training patch touches
a row adjacent to a test row."""


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


def raw_cube(raw_dir, crop) -> tuple[np.ndarray, dict, str]:
    """The fetched scene (cropped) as float32, its manifest, and the raw fingerprint every
    denoiser checkpoint records (cube and label files' sha256 and the crop)."""
    raw, _, manifest = load_raw(raw_dir, crop)
    crop = list(crop) if crop else None
    return np.asarray(raw, dtype=np.float32), manifest, raw_fingerprint(manifest, crop)


def band_range(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band minimum and maximum (float64, shape (B,)) of an (H, W, B) cube."""
    flat = np.asarray(cube).reshape(-1, cube.shape[-1])
    return flat.min(axis=0).astype(np.float64), flat.max(axis=0).astype(np.float64)


def training_scaling(cube: np.ndarray, split: RowSplit) -> tuple[np.ndarray, np.ndarray]:
    """Per-band min/max of the training rows only: the held-out rows never shape the scaling."""
    return band_range(np.asarray(cube)[split.train])


def check_scene(cube: np.ndarray, ckpt: dict) -> RowSplit:
    """The checkpoint's row split, after checking that it was trained on a scene of this shape."""
    shape = list(ckpt["meta"].get("shape", []))
    if shape != list(cube.shape):
        raise DataError(
            f"{ckpt.get('path', 'checkpoint')}: trained on a scene of shape {shape} but the "
            f"(cropped) scene is {list(cube.shape)}; run `hsi denoise_train` again"
        )
    return RowSplit.from_dict(ckpt["split"])


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


# --------------------------------------------------------------------------- training patches


def sample_patches(
    planes: torch.Tensor, table: torch.Tensor, n: int, size: int, gen: torch.Generator
) -> torch.Tensor:
    """``n`` random ``size``×``size`` patches (n, c, size, size): a random row of ``table``
    picks the ``c`` planes of (C, H, W) ``planes``, all cut at one random window, on their
    device."""
    _, h, w = planes.shape
    dev = planes.device
    u = torch.randint(table.shape[0], (n,), generator=gen, device=dev)
    r = torch.randint(h - size + 1, (n,), generator=gen, device=dev)
    c = torch.randint(w - size + 1, (n,), generator=gen, device=dev)
    offs = torch.arange(size, device=dev)
    rows = (r[:, None] + offs)[:, None, :, None]
    cols = (c[:, None] + offs)[:, None, None, :]
    return planes[table[u][:, :, None, None], rows, cols]


def noise_levels(
    n: int, sigma: float, sigma_range, blind: bool, gen: torch.Generator, device
) -> torch.Tensor:
    """Per-patch σ in [0, 1] units: ``sigma``/255, or uniform in ``sigma_range``/255 if blind."""
    if not blind:
        return torch.full((n,), sigma / 255.0, device=device)
    lo, hi = sigma_range
    u = torch.rand((n,), generator=gen, device=device)
    return (lo + (hi - lo) * u) / 255.0


def noise_like(x: torch.Tensor, sigmas: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """White Gaussian noise shaped as ``x`` with standard deviation ``sigmas[i]`` in sample i."""
    z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return z * sigmas.view(-1, *([1] * (x.dim() - 1)))
