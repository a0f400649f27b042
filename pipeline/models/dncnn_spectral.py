"""Spectral-context DnCNN: the noisy band plus its ``k`` nearest bands as input channels, the
centre band's noise as output — the idea of HSID-CNN (Yuan, Zhang, Li, Shen, Zhang,
"Hyperspectral Image Denoising Employing a Spatial–Spectral Deep Residual Convolutional Neural
Network", IEEE TGRS 57(2), 2019), on the DnCNN trunk of :mod:`pipeline.models.dncnn`.

Edge bands: the ``k`` neighbours are the bands at offsets −k/2 … −1, +1 … +k/2 of the centre,
reflected at the ends of the spectrum (band −1 is band 1, band B is band B − 2), so every band,
the first and the last included, gets ``k + 1`` channels in the same offset order and the same
network serves all of them. A cube with fewer bands than the reflection needs is an error.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import ParamsError
from pipeline.models.dncnn import DnCNN, check_int


def neighbour_bands(bands: int, k: int) -> np.ndarray:
    """(bands, k + 1) band indices: row ``b`` is band ``b`` first, then its neighbours at offsets
    −k/2 … −1, +1 … +k/2, reflected at the spectrum's ends."""
    check_int("dncnn_spectral", bands=(bands, 1), k=(k, 0))
    if k % 2:
        raise ParamsError(f"dncnn_spectral: k must be even (k/2 bands each side), got {k}")
    half = k // 2
    if half and bands < half + 1:
        raise ParamsError(f"dncnn_spectral: {bands} bands cannot give {half} neighbours each side")
    offsets = np.array([0, *range(-half, 0), *range(1, half + 1)], dtype=np.int64)
    idx = np.arange(bands)[:, None] + offsets[None, :]
    period = 2 * (bands - 1) if bands > 1 else 1
    idx = np.mod(idx, period)
    return np.where(idx >= bands, period - idx, idx)


class DnCNNSpectral(DnCNN):
    """DnCNN with ``k + 1`` input planes (band first, then its neighbours) and one output plane:
    :meth:`forward` returns the centre band minus its predicted noise, (N, 1, H, W)."""

    name = "dncnn_spectral"

    def __init__(self, *, depth: int, channels: int, k: int) -> None:
        check_int("dncnn_spectral", k=(k, 0))
        if k % 2:
            raise ParamsError(f"dncnn_spectral: k must be even (k/2 bands each side), got {k}")
        super().__init__(depth=depth, channels=channels, in_channels=k + 1, out_channels=1)
        self.config = {"name": self.name, "depth": depth, "channels": channels, "k": k}

    def plane_table(self, bands: int) -> np.ndarray:
        return neighbour_bands(bands, self.config["k"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - self.predict_noise(x)
