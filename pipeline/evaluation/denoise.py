"""Denoising quality (PSNR, MPSNR, MSSIM, SAM), the baselines (Gaussian filter, band-wise BM3D,
low-rank PCA projection, subspace + 2-D denoiser) and the denoisers' inference over a whole
(H, W, B) cube.

Cubes are in the per-band [0, 1] domain of :mod:`pipeline.training.denoise_data`, so the PSNR/SSIM
peak (``data_range``) is 1. MPSNR and MSSIM average the per-band scores, as in the HSI denoising
literature; SAM is the mean spectral angle over pixels, in degrees. Everything a baseline tunes
(filter width, rank) is chosen on the training rows, never on the held-out ones.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from pipeline.io import atomic_path
from pipeline.models.dncnn_subspace import RANK_SIGMA, Subspace, eigen_images, fit_subspace
from pipeline.training.common import autocast
from pipeline.training.denoise_data import add_noise, scale_bands, unscale_bands

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


def pca_denoise(noisy, sub: Subspace, rank: int) -> np.ndarray:
    """Low-rank projection: the spectra projected onto the first ``rank`` eigenvectors."""
    basis = sub.basis[:, :rank]
    return (sub.mean + eigen_images(noisy, sub, rank).astype(np.float64) @ basis.T).astype(
        np.float32
    )


def choose_rank(clean, noisy, sub: Subspace) -> tuple[int, list[float]]:
    """The rank whose projection of ``noisy`` has the highest MPSNR against ``clean`` (call it
    on the training rows), and the MPSNR of every rank 1 … B (adding one component at a time)."""
    clean = np.asarray(clean, np.float64)
    z = eigen_images(noisy, sub).astype(np.float64)
    est = np.broadcast_to(sub.mean, clean.shape).copy()
    scores = []
    for r in range(sub.basis.shape[1]):
        est += z[..., r : r + 1] * sub.basis[:, r]
        scores.append(mpsnr(clean, est))
    return int(np.argmax(scores)) + 1, scores


def _denoise_plane(plane: np.ndarray, how: str, width: float, sigma: float) -> np.ndarray:
    if how == "drop":
        return np.zeros_like(plane)
    if how == "bm3d":
        import bm3d

        return bm3d.bm3d(plane, sigma_psd=sigma / 255.0).astype(np.float32)
    return gaussian_denoise(plane[..., None], width)[..., 0]


def tune_subspace(clean, noisy, sub: Subspace, rank: int, sigma: float, use_bm3d: bool) -> list:
    """Per eigen-image ``k < rank`` of the training rows: ``("bm3d"|"gaussian", width)`` or
    ``("drop", 0)``, whichever is closest to the clean eigen-image (Gaussian widths from
    :data:`GAUSSIAN_GRID`, BM3D when installed)."""
    zc, zn = eigen_images(clean, sub, rank), eigen_images(noisy, sub, rank)
    plan = []
    for k in range(rank):
        options = [("drop", 0.0)] + [("gaussian", float(g)) for g in GAUSSIAN_GRID]
        if use_bm3d and sigma > 0:
            options.append(("bm3d", 0.0))
        errs = [
            float(np.mean((_denoise_plane(zn[..., k], how, w, sigma) - zc[..., k]) ** 2))
            for how, w in options
        ]
        plan.append(options[int(np.argmin(errs))])
    return plan


def subspace_denoise(noisy, sub: Subspace, plan: list, sigma: float) -> np.ndarray:
    """FastHyDe (Zhuang & Bioucas-Dias, IEEE JSTARS 2018): project onto the first ``len(plan)``
    eigenvectors, denoise each eigen-image as ``plan`` says (:func:`tune_subspace`), project
    back."""
    rank = len(plan)
    z = eigen_images(noisy, sub, rank)
    for k, (how, width) in enumerate(plan):
        z[..., k] = _denoise_plane(z[..., k], how, width, sigma)
    return (sub.mean + z.astype(np.float64) @ sub.basis[:, :rank].T).astype(np.float32)


def denoise_cube(
    model: nn.Module,
    cube,
    *,
    device: torch.device | str = "cpu",
    batch_bands: int | None = None,
    amp: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Denoise an (H, W, B) cube with any denoiser (each decides which planes its network sees,
    :meth:`denoise_array`); float32 (H, W, B).

    Planes go through in batches of ``batch_bands`` (default: as many as fit in about 1 M
    pixels, at least one), with bf16 autocast on CUDA and bf16-capable CPUs when ``amp``.
    """
    device = torch.device(device)
    cube = np.asarray(cube, dtype=np.float32)
    h, w, _ = cube.shape
    step = batch_bands or max(1, PIXELS_PER_BATCH // (h * w))

    @torch.inference_mode()
    def run(net: nn.Module, planes: torch.Tensor, table: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(table), *planes.shape[1:]), dtype=torch.float32)
        net = net.to(device).eval()
        idx = torch.as_tensor(table, dtype=torch.long)
        for start in tqdm(
            range(0, len(table), step), desc=net.name, unit="batch", disable=not progress
        ):
            x = planes[idx[start : start + step]].to(device)
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp, cpu=True):
                y = net(x)
            out[start : start + step] = y[:, 0].float().cpu()
        return out

    with torch.inference_mode():
        return model.denoise_array(cube, run)


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


def _tune_gaussian(clean_train, noisy_train, sub, sigma) -> dict:
    width, grid = tune_gaussian(clean_train, noisy_train)
    return {"width": width, "train_mpsnr": grid}


def _tune_pca(clean_train, noisy_train, sub, sigma) -> dict:
    rank, scores = choose_rank(clean_train, noisy_train, sub)
    return {"rank": rank, "train_mpsnr": scores[rank - 1]}


def _tune_subspace(clean_train, noisy_train, sub, sigma) -> dict:
    use_bm3d = bm3d_status()[0]
    rank = sub.rank_for(RANK_SIGMA)
    plan = tune_subspace(clean_train, noisy_train, sub, rank, sigma, use_bm3d)
    return {"rank": rank, "plan": plan, "denoiser": "bm3d" if use_bm3d else "gaussian"}


def _bm3d(noisy, setting, sub, sigma) -> np.ndarray:
    return bm3d_denoise(noisy, sigma) if sigma > 0 else np.asarray(noisy, np.float32).copy()


@dataclass(frozen=True)
class Baseline:
    """A classical denoiser: ``tune(clean_train, noisy_train, sub, sigma) -> setting`` on the
    training rows, ``apply(noisy, setting, sub, sigma)`` on any cube."""

    tune: Callable[..., dict]
    apply: Callable[..., np.ndarray]


BASELINES: dict[str, Baseline] = {
    "gaussian": Baseline(_tune_gaussian, lambda x, st, sub, s: gaussian_denoise(x, st["width"])),
    "bm3d": Baseline(lambda *a: {}, _bm3d),
    "pca": Baseline(_tune_pca, lambda x, st, sub, s: pca_denoise(x, sub, st["rank"])),
    "subspace": Baseline(
        _tune_subspace, lambda x, st, sub, s: subspace_denoise(x, sub, st["plan"], s)
    ),
}
"""The subspace baseline considers the eigen-images whose training-row variance exceeds the
noise variance at σ = 10/255 (:data:`RANK_SIGMA`, the ``dncnn_subspace`` rule); each is then
kept, filtered or dropped as the training rows say."""


def tune_baseline(name: str, clean_train, noisy_train, sub: Subspace, sigma: float) -> dict:
    """The settings of baseline ``name`` chosen on the training rows at noise ``sigma``:
    ``gaussian`` {width}, ``bm3d`` {}, ``pca`` {rank}, ``subspace`` {rank, plan}."""
    return BASELINES[name].tune(clean_train, noisy_train, sub, sigma)


def apply_baseline(name: str, noisy, setting: dict, sub: Subspace, sigma: float) -> np.ndarray:
    """Baseline ``name`` with the ``setting`` of :func:`tune_baseline` on a noisy cube."""
    return BASELINES[name].apply(noisy, setting, sub, sigma)


# --------------------------------------------------------------------------- experiments

TRAIN_NOISE, TEST_NOISE, ROBUSTNESS_NOISE, ROBUSTNESS_TUNING = 0, 1, 2, 3
"""Parts of the noise seed: each use of noise at a σ gets its own fixed draw."""
FIGURE_SIGMA = 30.0


def sigma_key(sigma: float) -> str:
    return f"sigma{sigma:g}"


def noise_seed(seed: int, sigma: float, part: int) -> list[int]:
    """Seed of the noise added at ``sigma`` for ``part`` (a region or use): fixed per run."""
    return [seed, round(1000 * sigma), part]


def _finite(metrics: dict) -> dict:
    """Non-finite scores (PSNR of an exact copy) become null so the JSON stays standard."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()
    }


def compare_denoisers(
    train01: np.ndarray,
    test01: np.ndarray,
    models: dict[str, nn.Module],
    sigmas: Sequence[float],
    seed: int,
    *,
    device,
    amp: bool,
    progress: bool = False,
) -> tuple[dict, dict, dict]:
    """Every denoiser and baseline on the held-out rows ``test01`` at each σ, the baselines tuned
    on the noisy training rows ``train01``.

    Returns (metrics by σ key and method, details by σ key: settings and seconds, the estimates
    at the σ nearest :data:`FIGURE_SIGMA` for the comparison figure).
    """
    import time

    sub = fit_subspace(train01)
    baselines = [b for b in BASELINES if b != "bm3d" or bm3d_status()[0]]
    fig_sigma = min(sigmas, key=lambda s: abs(s - FIGURE_SIGMA))
    metrics, details, figure = {}, {}, {}
    for sigma in sigmas:
        noisy_train = add_noise(train01, sigma, noise_seed(seed, sigma, TRAIN_NOISE))
        noisy = add_noise(test01, sigma, noise_seed(seed, sigma, TEST_NOISE))
        estimates, settings, seconds = {"noisy": noisy}, {}, {}
        for name in baselines:
            t0 = time.perf_counter()
            settings[name] = tune_baseline(name, train01, noisy_train, sub, sigma)
            estimates[name] = apply_baseline(name, noisy, settings[name], sub, sigma)
            seconds[name] = time.perf_counter() - t0
        for name, model in models.items():
            t0 = time.perf_counter()
            estimates[name] = denoise_cube(model, noisy, device=device, amp=amp, progress=progress)
            seconds[name] = time.perf_counter() - t0
        scores = {name: _finite(quality(test01, est)) for name, est in estimates.items()}
        scores["gaussian"]["filter_sigma"] = settings["gaussian"]["width"]
        scores["pca"]["rank"] = settings["pca"]["rank"]
        metrics[sigma_key(sigma)] = scores
        details[sigma_key(sigma)] = {"sigma": sigma, "baselines": settings, "seconds": seconds}
        if sigma == fig_sigma:
            figure = estimates
    return metrics, details, figure


def robustness_rows(
    cube: np.ndarray,
    scaling: tuple[np.ndarray, np.ndarray],
    train_rows: slice,
    denoised_rows: slice,
    oa: Callable[[np.ndarray], float],
    models: dict[str, nn.Module],
    baseline: str,
    sigmas: Sequence[float],
    seed: int,
    *,
    device,
    amp: bool,
) -> list[dict]:
    """Classification OA (``oa(raw cube)``) at each σ: of the noisy scene, after ``baseline``
    (tuned on the noisy training rows) and after each denoiser. Noise is added in the per-band
    [0, 1] domain of ``scaling`` (lo, hi) and mapped back to raw units; only ``denoised_rows``
    (the rows that reach a scored pixel) are denoised, the rest stay noisy. An output equal to
    its input (a bypassed clean cube) keeps the raw values."""
    lo, hi = scaling
    clean01 = scale_bands(cube, lo, hi)
    train01 = clean01[train_rows]
    sub = fit_subspace(train01)

    def denoised(fn, noisy01: np.ndarray, noisy: np.ndarray) -> np.ndarray:
        x = noisy01[denoised_rows]
        den = fn(x)
        out = np.array(noisy, dtype=np.float32, copy=True)
        if not np.array_equal(den, x):
            out[denoised_rows] = unscale_bands(den, lo, hi)
        return out

    rows = []
    for sigma in sigmas:
        noisy01 = add_noise(clean01, sigma, noise_seed(seed, sigma, ROBUSTNESS_NOISE))
        noisy = cube if sigma == 0 else unscale_bands(noisy01, lo, hi)
        tuning = add_noise(train01, sigma, noise_seed(seed, sigma, ROBUSTNESS_TUNING))
        setting = tune_baseline(baseline, train01, tuning, sub, sigma)
        outs = {"noisy": noisy}
        outs[f"baseline_{baseline}"] = denoised(
            lambda x, st=setting, s=sigma: apply_baseline(baseline, x, st, sub, s), noisy01, noisy
        )
        for name, model in models.items():
            outs[name] = denoised(
                lambda x, m=model: denoise_cube(m, x, device=device, amp=amp, progress=True),
                noisy01,
                noisy,
            )
        rows.append({"sigma": sigma, **{f"oa_{k}": oa(v) for k, v in outs.items()}})
    return rows
