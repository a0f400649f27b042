"""Spectral PCA fitted on a chosen set of pixels and applied to the whole scene.

The HybridSN notebook fits ``PCA(whiten=True)`` on every pixel, test pixels included
(``fit_on: all``); ``fit_on: train`` fits on training pixels only, the leak-free choice.
The fitted transform is stored as plain arrays so a checkpoint can carry it to ``hsi predict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ParamsError


@dataclass
class PCA:
    mean: np.ndarray  # (B,)
    components: np.ndarray  # (K, B), rows are unit eigenvectors, sign fixed as sklearn does
    explained_variance: np.ndarray  # (K,)
    explained_variance_ratio: np.ndarray  # (K,)
    whiten: bool
    scale: float  # a single global divisor applied after projection (1.0 for none)

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def n_bands(self) -> int:
        return self.components.shape[1]

    def transform(self, cube: np.ndarray) -> np.ndarray:
        """(H, W, B) or (N, B) → (..., K) float32."""
        if cube.shape[-1] != self.n_bands:
            raise ParamsError(
                f"the cube has {cube.shape[-1]} bands but the PCA was fitted on {self.n_bands}"
            )
        flat = cube.reshape(-1, self.n_bands).astype(np.float64)
        out = (flat - self.mean) @ self.components.T
        if self.whiten:
            out /= np.sqrt(self.explained_variance)
        out /= self.scale
        return out.reshape(*cube.shape[:-1], self.n_components).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "components": self.components,
            "explained_variance": self.explained_variance,
            "explained_variance_ratio": self.explained_variance_ratio,
            "whiten": np.array(self.whiten),
            "scale": np.array(self.scale),
        }

    @classmethod
    def identity(cls, bands: int) -> PCA:
        """The transform that keeps every band as it is: the "PCA" of a model that reads the
        full spectra (it standardises them itself)."""
        ones = np.ones(bands)
        return cls(np.zeros(bands), np.eye(bands), ones, ones / bands, whiten=False, scale=1.0)

    @classmethod
    def from_arrays(cls, arrays) -> PCA:
        return cls(
            mean=np.asarray(arrays["mean"], dtype=np.float64),
            components=np.asarray(arrays["components"], dtype=np.float64),
            explained_variance=np.asarray(arrays["explained_variance"], dtype=np.float64),
            explained_variance_ratio=np.asarray(arrays["explained_variance_ratio"], np.float64),
            whiten=bool(arrays["whiten"]),
            scale=float(arrays["scale"]),
        )


def fit_pca(
    pixels: np.ndarray, n_components: int, *, whiten: bool = False, scale: str = "none"
) -> PCA:
    """Fit on (N, B) pixels by eigendecomposition of the B×B covariance (B ≤ a few hundred).

    ``scale="global"`` divides every component by one scalar, the standard deviation of all
    projected values over the fitting pixels (derived from the eigenvalues, no second pass): the features get unit overall variance while the
    components keep their relative variances (unlike whitening, which blows up noisy ones).
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    n, bands = pixels.shape
    if not 1 <= n_components <= min(n, bands):
        raise ParamsError(
            f"'pca.components' = {n_components} must be between 1 and "
            f"min(pixels, bands) = {min(n, bands)}"
        )
    mean = pixels.mean(axis=0)
    centred = pixels - mean
    cov = centred.T @ centred / max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals = np.clip(evals[order], 0.0, None)
    evecs = evecs[:, order].T
    signs = np.sign(evecs[np.arange(bands), np.argmax(np.abs(evecs), axis=1)])
    evecs *= np.where(signs == 0, 1.0, signs)[:, None]
    k = n_components
    pca = PCA(
        mean=mean,
        components=evecs[:k],
        explained_variance=evals[:k],
        explained_variance_ratio=evals[:k] / evals.sum(),
        whiten=whiten,
        scale=1.0,
    )
    if whiten and np.any(pca.explained_variance <= 0):
        raise ParamsError("'pca.whiten' needs components with non-zero variance")
    if scale == "global":
        per_component = np.ones(k) if whiten else pca.explained_variance
        pca.scale = float(np.sqrt(per_component.mean() * (n - 1) / n)) or 1.0
    elif scale != "none":
        raise ParamsError(f"'pca.scale' = {scale!r} must be one of none, global")
    return pca
