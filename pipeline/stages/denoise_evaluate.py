"""Stage `denoise_evaluate`: every denoiser of ``denoise.models`` against the noisy input and the
baselines (Gaussian filter, band-wise BM3D when installed, low-rank PCA projection, subspace +
2-D denoiser) on the held-out rows of the scene, at each σ of ``denoise.eval_sigmas``."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from pipeline.data.fetching import load_raw
from pipeline.errors import DataError
from pipeline.evaluation.denoise import (
    apply_baseline,
    bm3d_status,
    denoise_cube,
    quality,
    save_comparison_png,
    tune_baseline,
)
from pipeline.io import write_json
from pipeline.provenance import raw_fingerprint
from pipeline.stages.common import denoise_dir, dncnn_path, raw_dir
from pipeline.tracking import recorded_run_id, start_run
from pipeline.training.checkpoint import check_checkpoint_provenance
from pipeline.training.common import device_name, resolve_device
from pipeline.training.denoise_data import (
    add_noise,
    check_scene,
    fit_subspace,
    row_split,
    scale_bands,
)
from pipeline.training.denoiser import load_denoiser

log = logging.getLogger(__name__)

FIGURE_SIGMA = 30.0
TRAIN_NOISE, TEST_NOISE = 0, 1
BASELINES = ("gaussian", "bm3d", "pca", "subspace")


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


def load_denoisers(params: dict, cube: np.ndarray, device) -> tuple[dict, dict]:
    """Every model of ``denoise.models`` and its checkpoint; DataError when their splits or
    scalings differ (they all come from the same training rows)."""
    models, ckpts, first = {}, {}, None
    for name in params["denoise"]["models"]:
        model, ckpt = load_denoiser(dncnn_path(params, name), device)
        split = check_scene(cube, ckpt)
        if first is None:
            first = ckpt
        elif split.to_dict() != first["split"] or not (
            np.array_equal(ckpt["band_min"], first["band_min"])
            and np.array_equal(ckpt["band_max"], first["band_max"])
        ):
            raise DataError(
                f"{ckpt['path']}: trained on other rows or scaling than {first['path']}; "
                "run `hsi denoise_train` for every model again"
            )
        models[name], ckpts[name] = model, ckpt
    return models, ckpts


def run(params: dict) -> dict:
    dp = params["denoise"]
    raw, _, manifest = load_raw(raw_dir(params), params["dataset"]["crop"])
    cube = np.asarray(raw, dtype=np.float32)
    device = resolve_device(params["train"]["device"])
    amp = params["train"]["amp"]
    models, ckpts = load_denoisers(params, cube, device)
    current = raw_fingerprint(manifest, params["dataset"]["crop"])
    for name, c in ckpts.items():
        check_checkpoint_provenance(
            c, current, against=str(raw_dir(params)), fix=f"hsi denoise_train --model {name}"
        )
    ckpt = next(iter(ckpts.values()))
    split = check_scene(cube, ckpt)
    if row_split(cube.shape[0], dp["test_fraction"]) != split:
        log.warning(
            "the denoisers were trained with test rows %s; 'denoise.test_fraction' = %s now gives "
            "others. Evaluating on the checkpoints' test rows, which they never saw",
            split.to_dict()["test_rows"],
            dp["test_fraction"],
        )
    clean = scale_bands(cube, ckpt["band_min"], ckpt["band_max"])
    train, test = clean[split.train], clean[split.test]
    sub = fit_subspace(train)
    has_bm3d, bm3d_note = bm3d_status()
    if not has_bm3d:
        log.warning("BM3D skipped: %s", bm3d_note)
    baselines = [b for b in BASELINES if b != "bm3d" or has_bm3d]

    sigmas = [float(s) for s in dp["eval_sigmas"]]
    fig_sigma = min(sigmas, key=lambda s: abs(s - FIGURE_SIGMA))
    metrics: dict[str, dict] = {}
    details: dict[str, dict] = {}
    figure_estimates: dict[str, np.ndarray] = {}
    for sigma in sigmas:
        noisy_train = add_noise(train, sigma, noise_seed(dp["seed"], sigma, TRAIN_NOISE))
        noisy = add_noise(test, sigma, noise_seed(dp["seed"], sigma, TEST_NOISE))
        seconds: dict[str, float] = {}
        settings: dict[str, dict] = {}
        estimates = {"noisy": noisy}
        for name in baselines:
            t0 = time.perf_counter()
            settings[name] = tune_baseline(name, train, noisy_train, sub, sigma)
            estimates[name] = apply_baseline(name, noisy, settings[name], sub, sigma)
            seconds[name] = time.perf_counter() - t0
        for name, model in models.items():
            t0 = time.perf_counter()
            estimates[name] = denoise_cube(model, noisy, device=device, amp=amp, progress=True)
            seconds[name] = time.perf_counter() - t0
        scores = {name: _finite(quality(test, est)) for name, est in estimates.items()}
        scores["gaussian"]["filter_sigma"] = settings["gaussian"]["width"]
        scores["pca"]["rank"] = settings["pca"]["rank"]
        metrics[sigma_key(sigma)] = scores
        details[sigma_key(sigma)] = {
            "sigma": sigma,
            "baselines": settings,
            "seconds": seconds,
        }
        log.info(
            "σ=%g: MPSNR %s",
            sigma,
            ", ".join(f"{k} {v['mpsnr']:.2f}" for k, v in scores.items() if v["mpsnr"]),
        )
        if sigma == fig_sigma:
            figure_estimates = estimates

    ranked = sorted(baselines, key=lambda b: -(metrics[sigma_key(fig_sigma)][b]["mpsnr"] or 0))
    out = denoise_dir(params)
    evaluation = {
        "dataset": manifest["dataset"],
        "region": "test rows",
        "split": split.to_dict(),
        "domain": "each band scaled to [0, 1] with the per-band min/max of the training rows",
        "models": {
            name: {"config": c["model_config"], "trained_noise": c["noise"], "path": c["path"]}
            for name, c in ckpts.items()
        },
        "best_baseline": ranked[0],
        "best_baseline_at_sigma": fig_sigma,
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
    for name in models:
        train_run = recorded_run_id(out / name / "train.json")
        with start_run(
            params, manifest["dataset"], name, tags, task="denoising", run_id=train_run
        ) as mlrun:
            mlrun.log_metrics(
                {
                    f"test_{skey}_{method}_{score}": value
                    for skey, by_method in metrics.items()
                    for method, scores in by_method.items()
                    if method in (name, "noisy", *baselines)
                    for score, value in scores.items()
                    if value is not None
                }
            )
            mlrun.set_tags({"bm3d": bm3d_note})
            for fname in ("metrics.json", "evaluation.json", "comparison.png"):
                mlrun.log_artifact(out / fname, "denoise_evaluation")
    return metrics


def main(params: dict, args) -> None:
    run(params)
