"""Stage `denoise_evaluate`: DnCNN against the noisy input, a tuned Gaussian filter and BM3D on the
held-out rows of the scene, at each σ of ``denoise.eval_sigmas``."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from pipeline.errors import DataError
from pipeline.evaluation.denoise import (
    bm3d_denoise,
    bm3d_status,
    denoise_cube,
    gaussian_denoise,
    quality,
    save_comparison_png,
    tune_gaussian,
)
from pipeline.io import write_json
from pipeline.stages.denoise_train import RUN_NAME, denoise_dir, dncnn_path, raw_scene
from pipeline.tracking import recorded_run_id, start_run
from pipeline.training.common import device_name, resolve_device
from pipeline.training.denoiser import (
    RowSplit,
    add_noise,
    load_denoiser,
    row_split,
    scale_bands,
)

log = logging.getLogger(__name__)

FIGURE_SIGMA = 30.0
TRAIN_NOISE, TEST_NOISE = 0, 1


def sigma_key(sigma: float) -> str:
    return f"sigma{sigma:g}"


def noise_seed(seed: int, sigma: float, part: int) -> list[int]:
    """Seed of the noise added at ``sigma`` to the train (0) or test (1) region: fixed per run."""
    return [seed, round(1000 * sigma), part]


def _finite(metrics: dict) -> dict:
    """Non-finite scores (PSNR of an exact copy) become null so the JSON stays standard."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()
    }


def check_scene(cube: np.ndarray, ckpt: dict, path) -> RowSplit:
    """The checkpoint's row split, after checking that it was trained on a scene of this shape."""
    shape = list(ckpt["meta"].get("shape", []))
    if shape != list(cube.shape):
        raise DataError(
            f"{path}: trained on a scene of shape {shape} but the (cropped) scene is "
            f"{list(cube.shape)}; run `hsi denoise_train` again"
        )
    return RowSplit.from_dict(ckpt["split"])


def run(params: dict) -> dict:
    dp = params["denoise"]
    cube, manifest = raw_scene(params)
    device = resolve_device(params["train"]["device"])
    amp = params["train"]["amp"]
    path = dncnn_path(params)
    model, ckpt = load_denoiser(path, device)
    split = check_scene(cube, ckpt, path)
    if row_split(cube.shape[0], dp["test_fraction"]) != split:
        log.warning(
            "%s was trained with test rows %s; 'denoise.test_fraction' = %s now gives others. "
            "Evaluating on the checkpoint's test rows, which it never saw",
            path,
            split.to_dict()["test_rows"],
            dp["test_fraction"],
        )
    clean = scale_bands(cube, ckpt["band_min"], ckpt["band_max"])
    train, test = clean[split.train], clean[split.test]
    has_bm3d, bm3d_note = bm3d_status()
    if not has_bm3d:
        log.warning("BM3D skipped: %s", bm3d_note)

    sigmas = [float(s) for s in dp["eval_sigmas"]]
    fig_sigma = min(sigmas, key=lambda s: abs(s - FIGURE_SIGMA))
    metrics: dict[str, dict] = {}
    details: dict[str, dict] = {}
    figure_estimates: dict[str, np.ndarray] = {}
    for sigma in sigmas:
        noisy_train = add_noise(train, sigma, noise_seed(dp["seed"], sigma, TRAIN_NOISE))
        noisy = add_noise(test, sigma, noise_seed(dp["seed"], sigma, TEST_NOISE))
        filter_sigma, grid = tune_gaussian(train, noisy_train)
        seconds: dict[str, float] = {}
        estimates = {"noisy": noisy}
        t0 = time.perf_counter()
        estimates["gaussian"] = gaussian_denoise(noisy, filter_sigma)
        seconds["gaussian"] = time.perf_counter() - t0
        if has_bm3d and sigma > 0:
            t0 = time.perf_counter()
            estimates["bm3d"] = bm3d_denoise(noisy, sigma, progress=True)
            seconds["bm3d"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        estimates["dncnn"] = denoise_cube(model, noisy, device=device, amp=amp, progress=True)
        seconds["dncnn"] = time.perf_counter() - t0
        scores = {name: _finite(quality(test, est)) for name, est in estimates.items()}
        scores["gaussian"]["filter_sigma"] = filter_sigma
        metrics[sigma_key(sigma)] = scores
        details[sigma_key(sigma)] = {
            "sigma": sigma,
            "gaussian_filter_sigma": filter_sigma,
            "gaussian_train_mpsnr": grid,
            "seconds": seconds,
        }
        log.info(
            "σ=%g: MPSNR %s",
            sigma,
            ", ".join(f"{k} {v['mpsnr']:.2f}" for k, v in scores.items() if v["mpsnr"]),
        )
        if sigma == fig_sigma:
            figure_estimates = estimates

    out = denoise_dir(params)
    evaluation = {
        "dataset": manifest["dataset"],
        "region": "test rows",
        "split": split.to_dict(),
        "domain": "each band scaled to [0, 1] with the checkpoint's per-band min/max",
        "trained_noise": ckpt["noise"],
        "device": device_name(device),
        "bm3d": {"available": has_bm3d, "note": bm3d_note},
        "sigmas": details,
    }
    write_json(out / "metrics.json", metrics)
    write_json(out / "evaluation.json", evaluation)
    rgb = list(ckpt["meta"].get("rgb_bands") or manifest["rgb_bands"])
    save_comparison_png(
        out / "comparison.png",
        test,
        figure_estimates,
        band=rgb[0],
        rgb_bands=rgb,
        title=f"{manifest['dataset']}: held-out rows {split.test_start}-{split.height - 1}, "
        f"σ = {fig_sigma:g}/255",
    )

    tags = {"stage": "denoise_evaluate", "device": device_name(device)}
    train_run = recorded_run_id(out / "train.json")
    with start_run(
        params, manifest["dataset"], RUN_NAME, tags, task="denoising", run_id=train_run
    ) as mlrun:
        mlrun.log_metrics(
            {
                f"test_{skey}_{method}_{name}": value
                for skey, by_method in metrics.items()
                for method, scores in by_method.items()
                for name, value in scores.items()
                if value is not None
            }
        )
        mlrun.set_tags({"bm3d": bm3d_note})
        for name in ("metrics.json", "evaluation.json", "comparison.png"):
            mlrun.log_artifact(out / name, "denoise_evaluation")
    return metrics


def main(params: dict, args) -> None:
    run(params)
