"""Denoising quality (PSNR, MPSNR, MSSIM, SAM), the Gaussian-filter and BM3D baselines, and
band-by-band DnCNN inference over a whole (H, W, B) cube.

Cubes are in the per-band [0, 1] domain of :mod:`pipeline.training.denoiser`, so the PSNR/SSIM
peak (``data_range``) is 1. MPSNR and MSSIM average the per-band scores, as in the HSI denoising
literature; SAM is the mean spectral angle over pixels, in degrees.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from pipeline.io import atomic_path
from pipeline.training.common import autocast

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
GAUSSIAN_GRID = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
"""Spatial σ (pixels) tried by :func:`tune_gaussian`; 0 leaves the input as it is."""

PIXELS_PER_BATCH = 1 << 20


def _pair(clean, est) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(clean, dtype=np.float64)
    b = np.asarray(est, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"clean has shape {a.shape} but the estimate has {b.shape}")
    return a, b


def _cube_pair(clean, est) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(clean, est)
    if a.ndim != 3:
        raise ValueError(f"expected (H, W, B) cubes, got shape {a.shape}")
    return a, b


def psnr(clean, est, data_range: float = 1.0) -> float:
    """10·log10(data_range² / MSE) in dB; ``inf`` for identical inputs."""
    a, b = _pair(clean, est)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def band_psnr(clean, est, data_range: float = 1.0) -> np.ndarray:
    """PSNR of each band of (H, W, B) cubes, shape (B,)."""
    a, b = _cube_pair(clean, est)
    mse = np.mean((a - b) ** 2, axis=(0, 1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def mpsnr(clean, est, data_range: float = 1.0) -> float:
    """Mean over bands of the per-band PSNR."""
    return float(np.mean(band_psnr(clean, est, data_range)))


def band_ssim(clean, est, data_range: float = 1.0) -> np.ndarray:
    """SSIM of each band (Wang et al., IEEE TIP 2004), shape (B,).

    Gaussian window σ = 1.5 truncated at 3.5σ (11×11), K1 = 0.01, K2 = 0.03, population
    covariances, reflect padding, and the mean taken without the 5-pixel border: the same number
    as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``. A band narrower than the window keeps its
    border (skimage refuses such images).
    """
    a, b = _cube_pair(clean, est)
    sigma = (SSIM_SIGMA, SSIM_SIGMA, 0.0)

    def blur(x):
        return ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=SSIM_TRUNCATE)

    ux, uy = blur(a), blur(b)
    vx = blur(a * a) - ux * ux
    vy = blur(b * b) - uy * uy
    vxy = blur(a * b) - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    h, w = s.shape[:2]
    if h > 2 * pad and w > 2 * pad:
        s = s[pad : h - pad, pad : w - pad]
    return s.mean(axis=(0, 1))


def mssim(clean, est, data_range: float = 1.0) -> float:
    """Mean over bands of the per-band SSIM."""
    return float(np.mean(band_ssim(clean, est, data_range)))


def sam_degrees(clean, est, eps: float = 1e-12) -> float:
    """Mean spectral angle (degrees) between the clean and estimated spectra of each pixel.

    Pixels whose spectrum is all zeros in either cube have no angle and are left out; NaN if
    none is left.
    """
    a, b = _cube_pair(clean, est)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > eps) & (nb > eps)
    if not ok.any():
        return math.nan
    cos = np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok])
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


def quality(clean, est) -> dict[str, float]:
    """MPSNR (dB), MSSIM and SAM (degrees) of an estimate of a clean [0, 1] cube."""
    return {"mpsnr": mpsnr(clean, est), "mssim": mssim(clean, est), "sam": sam_degrees(clean, est)}


def gaussian_denoise(cube, sigma: float) -> np.ndarray:
    """Each band blurred by a spatial Gaussian of ``sigma`` pixels (no spectral smoothing)."""
    cube = np.asarray(cube, dtype=np.float32)
    if sigma <= 0:
        return cube.copy()
    return ndimage.gaussian_filter(cube, (sigma, sigma, 0.0), mode="reflect")


def tune_gaussian(
    clean, noisy, grid: Sequence[float] = GAUSSIAN_GRID
) -> tuple[float, dict[float, float]]:
    """The filter σ of ``grid`` with the highest MPSNR on (clean, noisy), and every σ's MPSNR.

    Call it on the training region so the test region plays no part in the choice.
    """
    scores = {float(s): mpsnr(clean, gaussian_denoise(noisy, s)) for s in grid}
    return max(scores, key=scores.get), scores


def bm3d_status() -> tuple[bool, str]:
    """Whether the optional ``bm3d`` package can be used, and its version or why not."""
    try:
        import bm3d  # noqa: F401
    except Exception as e:  # an ImportError, or its bundled library failing to load
        return False, f"bm3d not usable ({type(e).__name__}: {e}); `pip install bm3d` to add it"
    return True, f"bm3d {importlib.metadata.version('bm3d')}"


def bm3d_denoise(cube, sigma: float, *, progress: bool = False) -> np.ndarray:
    """BM3D (Dabov et al. 2007, package ``bm3d``) on each band; ``sigma`` in /255 units."""
    import bm3d

    cube = np.asarray(cube, dtype=np.float32)
    out = np.empty_like(cube)
    for b in tqdm(range(cube.shape[-1]), desc="bm3d", unit="band", disable=not progress):
        out[..., b] = bm3d.bm3d(cube[..., b], sigma_psd=sigma / 255.0)
    return out


@torch.inference_mode()
def denoise_cube(
    model: nn.Module,
    cube,
    *,
    device: torch.device | str = "cpu",
    batch_bands: int | None = None,
    amp: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Run ``model`` on every band of an (H, W, B) cube as a grayscale image; float32 (H, W, B).

    Bands go through in batches of ``batch_bands`` (default: as many as fit in about 1 M pixels,
    at least one), with bf16 autocast on CUDA when ``amp``.
    """
    device = torch.device(device)
    cube = np.asarray(cube, dtype=np.float32)
    h, w, bands = cube.shape
    step = batch_bands or max(1, PIXELS_PER_BATCH // (h * w))
    model = model.to(device).eval()
    planes = torch.from_numpy(np.ascontiguousarray(np.moveaxis(cube, -1, 0)))
    out = torch.empty_like(planes)
    starts = range(0, bands, step)
    for start in tqdm(starts, desc="dncnn", unit="batch", disable=not progress):
        x = planes[start : start + step, None].to(device)
        with autocast(device, amp):
            y = model(x)
        out[start : start + step] = y[:, 0].float().cpu()
    return np.moveaxis(out.numpy(), 0, -1)


def _stretch(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((image - lo) / span, 0.0, 1.0)


def save_comparison_png(
    path,
    clean: np.ndarray,
    estimates: dict[str, np.ndarray],
    band: int,
    rgb_bands: Sequence[int],
    title: str | None = None,
) -> None:
    """One row per image (clean first, then each estimate): band ``band`` in grey and a
    false-colour composite of ``rgb_bands``, titled with the whole cube's MPSNR against ``clean``.

    Every panel uses the clean image's 2-98 percentile stretch, so noise and blur are compared
    on the same grey/colour scale.
    """
    rgb_bands = [int(b) for b in rgb_bands]
    idx = [band, *rgb_bands]
    lo = np.percentile(clean[..., idx], 2, axis=(0, 1))
    hi = np.percentile(clean[..., idx], 98, axis=(0, 1))
    rows = [("clean", clean), *estimates.items()]
    h, w = clean.shape[:2]
    panel_w = 3.0
    panel_h = max(0.6, panel_w * h / w)
    fig = Figure(
        figsize=(2 * panel_w + 0.4, len(rows) * (panel_h + 0.35) + (0.4 if title else 0.1)),
        dpi=150,
        layout="constrained",
        facecolor="white",
    )
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(rows), 2, squeeze=False))
    for (name, cube), (ax_band, ax_rgb) in zip(rows, axes, strict=True):
        shown = _stretch(np.asarray(cube)[..., idx].astype(np.float64), lo, hi)
        label = name if name == "clean" else f"{name} (MPSNR {mpsnr(clean, cube):.2f} dB)"
        ax_band.imshow(shown[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_rgb.imshow(shown[..., 1:], interpolation="nearest")
        ax_band.set_title(f"{label}: band {band}", fontsize=8)
        ax_rgb.set_title(f"{label}: bands {', '.join(map(str, rgb_bands))}", fontsize=8)
        for ax in (ax_band, ax_rgb):
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, facecolor="white")
