"""Subspace DnCNN: DnCNN on the eigen-images of the cube's low-rank spectral subspace — the idea
of FastHyDe (Zhuang & Bioucas-Dias, "Fast Hyperspectral Image Denoising and Inpainting Based on
Low-Rank and Sparse Representations", IEEE JSTARS 11(3), 2018) with a learned 2-D denoiser in
place of BM3D.

The basis ``E`` (B × B, orthonormal columns ordered by decreasing eigenvalue ``λ``) and the mean
``μ`` are those of the clean training rows (buffers, saved with the weights). A noisy cube ``Y``
gives eigen-images ``Z = (Y − μ) E``; because ``E`` is orthonormal, white noise of σ on every band
is white noise of the same σ on every eigen-image, so one DnCNN, trained on the clean
eigen-images of the training rows with that noise, denoises the first ``rank`` of them. The
remaining ``B − rank`` carry little signal: each is shrunk by its Wiener factor
``λ_k / (λ_k + σ̂²)`` instead, with σ̂² estimated from their excess variance over ``λ_k``. When
σ̂ is below :data:`BYPASS_SIGMA` the input is returned unchanged: a clean cube is not "denoised"
(on Indian Pines' held-out rows σ̂ reads 0.2/255 without noise and 2.0, 5.0, 10.0, 30.1/255 at
σ = 2, 5, 10, 30).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.dncnn import DnCNN, check_int

BYPASS_SIGMA = 1.0
"""σ̂ (in /255 units) below which :class:`DnCNNSubspace` leaves its input as it is."""


class DnCNNSubspace(nn.Module):
    """``denoiser`` (a 1-plane DnCNN) plus the subspace buffers ``mean`` (B,), ``basis`` (B, B)
    and ``eigvals`` (B,); :meth:`set_subspace` fills them before training."""

    name = "dncnn_subspace"

    def __init__(self, depth: int = 17, channels: int = 64, bands: int = 1, rank: int = 1) -> None:
        super().__init__()
        check_int("dncnn_subspace", bands=(bands, 1), rank=(rank, 1))
        rank = min(rank, bands)
        self.denoiser = DnCNN(depth=depth, channels=channels)
        self.register_buffer("mean", torch.zeros(bands))
        self.register_buffer("basis", torch.eye(bands))
        self.register_buffer("eigvals", torch.zeros(bands))
        self.config = {"depth": depth, "channels": channels, "bands": bands, "rank": rank}

    @property
    def rank(self) -> int:
        return self.config["rank"]

    def set_subspace(self, mean, basis, eigvals) -> None:
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean))
            self.basis.copy_(torch.as_tensor(basis))
            self.eigvals.copy_(torch.as_tensor(eigvals))

    def eigen_images(self, cube: torch.Tensor) -> torch.Tensor:
        """(…, B) → all B coefficients (…, B) in the eigenbasis."""
        return (cube - self.mean) @ self.basis

    def noise_variance(self, z: torch.Tensor) -> torch.Tensor:
        """σ̂²: the median over the components beyond ``rank`` of their variance in ``z`` (…, B)
        minus their clean variance λ_k (0 when ``rank`` = B)."""
        tail = z[..., self.rank :].reshape(-1, z.shape[-1] - self.rank)
        if tail.shape[-1] == 0:
            return torch.zeros((), dtype=z.dtype)
        return (tail.var(dim=0) - self.eigvals[self.rank :]).median().clamp_min(0)

    def is_clean(self, z: torch.Tensor) -> bool:
        """Whether σ̂ < :data:`BYPASS_SIGMA`/255, so the input should be left as it is."""
        return bool(self.noise_variance(z).sqrt() * 255 < BYPASS_SIGMA)

    def tail_weights(self, z: torch.Tensor) -> torch.Tensor:
        """Wiener factors λ_k/(λ_k + σ̂²) of the components beyond ``rank`` for coefficients
        ``z`` (…, B)."""
        lam = self.eigvals[self.rank :].clamp_min(0)
        return lam / (lam + self.noise_variance(z)).clamp_min(torch.finfo(lam.dtype).tiny)

    def reconstruct(self, z_head: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The denoised cube (…, B) from the denoised leading eigen-images ``z_head`` (…, rank)
        and the noisy coefficients ``z`` (…, B), whose tail is Wiener-shrunk."""
        tail = z[..., self.rank :] * self.tail_weights(z)
        coeffs = torch.cat([z_head, tail], dim=-1)
        return self.mean + coeffs @ self.basis.T

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        """Denoise a (H, W, B) cube in one go (small scenes; stages batch the eigen-images)."""
        z = self.eigen_images(cube)
        if self.is_clean(z):
            return cube.clone()
        planes = z[..., : self.rank].permute(2, 0, 1).unsqueeze(1)
        head = self.denoiser(planes)[:, 0].permute(1, 2, 0)
        return self.reconstruct(head, z)
