"""Stage `denoise_evaluate`: every denoiser of ``denoise.models`` against the noisy input and the
baselines (Gaussian filter, band-wise BM3D when installed, low-rank PCA projection, subspace +
2-D denoiser) on the held-out rows of the scene, at each σ of ``denoise.eval_sigmas``."""

from __future__ import annotations

import json
import logging

from pipeline.evaluation.denoise import (
    FIGURE_SIGMA,
    bm3d_status,
    compare_denoisers,
    save_comparison_png,
)
from pipeline.io import write_json
from pipeline.stages.common import denoise_dir, denoiser_paths, raw_dir
from pipeline.tracking import check_store, recorded_run_id, start_run
from pipeline.training.common import device_name, resolve_device
from pipeline.training.denoise_data import RowSplit, raw_cube, row_split, scale_bands
from pipeline.training.denoiser import load_denoisers

log = logging.getLogger(__name__)


def run(params) -> dict:
    dp = params.denoise
    cube, manifest, raw_fp = raw_cube(raw_dir(params), params.dataset.crop)
    device = resolve_device(params.compute.device)
    models, ckpts = load_denoisers(
        denoiser_paths(params), cube, raw_fp, raw_dir=str(raw_dir(params)), device=device
    )
    ckpt = next(iter(ckpts.values()))
    split = RowSplit.from_dict(ckpt["split"])
    if row_split(cube.shape[0], dp.test_fraction) != split:
        log.warning("the denoisers were trained with test rows %s; evaluating on those",
                    split.to_dict()["test_rows"])  # fmt: skip
    clean = scale_bands(cube, ckpt["band_min"], ckpt["band_max"])
    sigmas = [float(s) for s in dp.eval_sigmas]
    metrics, details, figure = compare_denoisers(
        clean[split.train], clean[split.test], models, sigmas, dp.seed, device=device,
        amp=params.compute.amp, progress=True,
    )  # fmt: skip
    fig_sigma = min(sigmas, key=lambda s: abs(s - FIGURE_SIGMA))
    at = metrics[f"sigma{fig_sigma:g}"]
    baselines = [b for b in details[f"sigma{fig_sigma:g}"]["baselines"]]
    has_bm3d, bm3d_note = bm3d_status()
    evaluation = {
        "dataset": manifest["dataset"],
        "region": "test rows",
        "split": split.to_dict(),
        "domain": "each band scaled to [0, 1] with the per-band min/max of the training rows",
        "models": {
            n: {k: c[k] for k in ("model_config", "noise", "path", "sha256")}
            for n, c in ckpts.items()
        },  # fmt: skip
        "best_baseline": max(baselines, key=lambda b: at[b]["mpsnr"] or 0),
        "best_baseline_at_sigma": fig_sigma,
        "device": device_name(device),
        "bm3d": {"available": has_bm3d, "note": bm3d_note},
        "sigmas": details,
    }
    out = denoise_dir(params)
    evaluation["baseline_runs"] = _recorded_baseline_runs(out / "evaluation.json")
    write_json(out / "metrics.json", metrics)
    write_json(out / "evaluation.json", evaluation)
    rgb = list(ckpt["meta"].get("rgb_bands") or manifest["rgb_bands"])
    title = f"{manifest['dataset']}: held-out rows {split.test_start}-{split.height - 1}"
    save_comparison_png(out / "comparison.png", clean[split.test], figure, band=rgb[0],
                        rgb_bands=rgb, title=f"{title}, σ = {fig_sigma:g}/255")  # fmt: skip
    runs = _track(params, manifest["dataset"], models, metrics, out, evaluation["baseline_runs"],
                  bm3d_note, device_name(device))  # fmt: skip
    if runs != evaluation["baseline_runs"]:
        write_json(out / "evaluation.json", {**evaluation, "baseline_runs": runs})
    return metrics


def _recorded_baseline_runs(path) -> dict:
    """The baselines' MLflow run ids an earlier evaluation recorded (reopened, not duplicated)."""
    try:
        return dict(json.loads(path.read_text()).get("baseline_runs") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def _track(
    params, dataset: str, models, metrics: dict, out, baseline_runs: dict, bm3d_note: str,
    device: str,
) -> dict:  # fmt: skip
    """Each denoiser's run, and one run per baseline (``noisy`` included), gets its scores per σ
    (``mpsnr_sigma30``, ...): one bar per method in each chart of `<dataset>/denoising`. Returns
    the baselines' run ids."""
    methods = list(next(iter(metrics.values())))
    runs = {}
    for name in methods:
        baseline = name not in models
        recorded = baseline_runs.get(name) if baseline else recorded_run_id(
            out / name / "train.json"
        )  # fmt: skip
        tags = {"stage": "denoise_evaluate", "device": device, "bm3d": bm3d_note}
        if baseline:
            tags["hsi.role"] = "baseline"
        with start_run(params, dataset, name, tags, task="denoising", run_id=recorded) as mlrun:
            if baseline:
                mlrun.log_params({"model": name})
                runs[name] = mlrun.run_id
            mlrun.log_metrics(
                {
                    f"{score}_{skey}": value
                    for skey, by_method in metrics.items()
                    for score, value in by_method[name].items()
                    if value is not None
                }
            )
            if not baseline:
                for fname in ("metrics.json", "evaluation.json", "comparison.png"):
                    mlrun.log_artifact(out / fname, "denoise_evaluation")
    return {k: v for k, v in runs.items() if v}


def main(params, args) -> None:
    check_store(params)  # an unusable MLflow store fails here, before any work
    run(params)
