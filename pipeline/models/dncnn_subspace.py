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

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.models.dncnn import DnCNN, Planes, RunPlanes, check_int

BYPASS_SIGMA = 1.0
"""σ̂ (in /255 units) below which :class:`DnCNNSubspace` leaves its input as it is."""

RANK_SIGMA = 10.0
"""Default rank, for the model and the subspace baseline alike: the eigen-images whose clean
variance on the training rows exceeds the noise variance at σ = 10/255, the lowest noise level
of the usual evaluation set."""


@dataclass(frozen=True)
class Subspace:
    """Mean (B,), orthonormal eigenvectors as columns (B, B) and eigenvalues (B,), decreasing."""

    mean: np.ndarray
    basis: np.ndarray
    eigvals: np.ndarray

    def rank_for(self, sigma: float = RANK_SIGMA) -> int:
        """Eigen-images whose variance exceeds the noise variance (σ/255)² (at least one)."""
        return max(1, int(np.sum(self.eigvals > (sigma / 255.0) ** 2)))


def fit_subspace(clean01: np.ndarray) -> Subspace:
    """PCA of the spectra of an (H, W, B) cube (call it on the training rows)."""
    flat = np.asarray(clean01, np.float64).reshape(-1, clean01.shape[-1])
    mean = flat.mean(axis=0)
    cov = np.cov(flat - mean, rowvar=False).reshape(flat.shape[1], flat.shape[1])
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vecs = vecs[:, order]
    vecs *= np.where(vecs[np.abs(vecs).argmax(axis=0), range(vecs.shape[1])] < 0, -1.0, 1.0)
    return Subspace(mean, vecs, np.clip(vals[order], 0.0, None))


def eigen_images(cube01: np.ndarray, sub: Subspace, rank: int | None = None) -> np.ndarray:
    """(H, W, rank) float32 coefficients of the centred spectra in the first ``rank`` eigenvectors."""
    basis = sub.basis if rank is None else sub.basis[:, :rank]
    return ((np.asarray(cube01, np.float64) - sub.mean) @ basis).astype(np.float32)


class DnCNNSubspace(nn.Module):
    """``denoiser`` (a 1-plane DnCNN) plus the subspace buffers ``mean`` (B,), ``basis`` (B, B)
    and ``eigvals`` (B,); :meth:`fit_to` (or :meth:`set_subspace`) fills them before training.
    ``rank`` 0 means "choose it from the training rows" (:data:`RANK_SIGMA`)."""

    name = "dncnn_subspace"

    def __init__(self, *, depth: int, channels: int, bands: int, rank: int) -> None:
        super().__init__()
        check_int("dncnn_subspace", bands=(bands, 1), rank=(rank, 0))
        self.denoiser = DnCNN(depth=depth, channels=channels)
        self.register_buffer("mean", torch.zeros(bands))
        self.register_buffer("basis", torch.eye(bands))
        self.register_buffer("eigvals", torch.zeros(bands))
        self.config = {
            "name": self.name,
            "depth": depth,
            "channels": channels,
            "bands": bands,
            "rank": min(rank, bands),
        }

    @property
    def rank(self) -> int:
        return self.config["rank"]

    @property
    def receptive_field(self) -> int:
        return self.denoiser.receptive_field

    @property
    def trainable_net(self) -> nn.Module:
        """The loop trains the inner DnCNN on eigen-images; the subspace is fitted, not learned."""
        return self.denoiser

    def set_subspace(self, mean, basis, eigvals, rank: int | None = None) -> None:
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean))
            self.basis.copy_(torch.as_tensor(basis))
            self.eigvals.copy_(torch.as_tensor(eigvals))
        if rank is not None:
            self.config["rank"] = min(int(rank), self.config["bands"])

    def fit_to(self, clean01: np.ndarray) -> None:
        """The subspace of the clean training rows, and the rank when it was left at 0."""
        sub = fit_subspace(clean01)
        self.set_subspace(sub.mean, sub.basis, sub.eigvals, self.rank or sub.rank_for())

    def training_planes(self, clean01: np.ndarray) -> Planes:
        """The first ``rank`` clean eigen-images, each alone."""
        sub = Subspace(*(t.double().numpy() for t in (self.mean, self.basis, self.eigvals)))
        z = np.ascontiguousarray(np.moveaxis(eigen_images(clean01, sub, self.rank), -1, 0))
        return Planes(z, np.arange(len(z))[:, None])

    def denoise_array(self, cube01: np.ndarray, run: RunPlanes) -> np.ndarray:
        """The leading eigen-images through the DnCNN, the tail Wiener-shrunk; a cube whose
        estimated noise is below :data:`BYPASS_SIGMA` comes back unchanged."""
        cpu = self.to("cpu")
        z = cpu.eigen_images(torch.from_numpy(np.asarray(cube01, np.float32)))
        if cpu.is_clean(z):
            return np.array(cube01, np.float32, copy=True)
        head = z[..., : self.rank].permute(2, 0, 1).contiguous()
        out = run(self.denoiser, head, np.arange(self.rank)[:, None])
        return cpu.reconstruct(out.permute(1, 2, 0), z).numpy()

    def eigen_images(self, cube: torch.Tensor) -> torch.Tensor:
        """(…, B) → all B coefficients (…, B) in the eigenbasis."""
        return (cube - self.mean) @ self.basis

    def noise_variance(self, z: torch.Tensor) -> torch.Tensor:
        """σ̂²: the median over the components beyond ``rank`` of their variance in ``z`` (…, B)
        minus their clean variance λ_k (0 when ``rank`` = B)."""
        if z.shape[-1] == self.rank:
            return torch.zeros((), dtype=z.dtype)
        tail = z[..., self.rank :].reshape(-1, z.shape[-1] - self.rank)
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
