"""Stage `robustness`: a trained classifier's test OA on a noisy scene, directly, after the best
baseline and after each denoiser of ``denoise.models``.

For each σ of ``denoise.robustness_sigmas`` white Gaussian noise of σ/255 is added to every band
of the (cropped) raw scene in the denoisers' per-band [0, 1] domain and mapped back to raw units;
the classifier ``denoise.robustness_model`` of seed ``denoise.robustness_seed`` then classifies
the scene through its own fitted PCA. OA is scored only on the classifier's test pixels that lie
in the denoisers' held-out rows, which no denoiser was trained on (their count is in the output);
the other test pixels lie in rows the denoisers learned from. Denoisers and baselines run on the
rows that can reach a scored pixel (the held-out rows, plus the classifier's patch radius and
the network's receptive-field radius above them); the rows above stay noisy, which changes no
scored prediction and saves more than half the work. The best baseline is the one with
the highest MPSNR in `denoise_evaluate`'s report, tuned again on the training rows at each σ; the
``oa_denoised`` column is the learned denoiser with the highest MPSNR there.
"""

from __future__ import annotations

import csv
import io
import json
import logging

import numpy as np

from pipeline.data.fetching import load_raw
from pipeline.data.pca import PCA
from pipeline.errors import DataError, ParamsError
from pipeline.evaluation.denoise import apply_baseline, denoise_cube, tune_baseline
from pipeline.evaluation.figures import save_curve_png
from pipeline.evaluation.inference import predict_scene
from pipeline.io import write_json, write_text
from pipeline.provenance import raw_fingerprint
from pipeline.stages.common import (
    checkpoint_path,
    denoise_dir,
    dncnn_path,
    load_prepared,
    raw_dir,
    robustness_dir,
)
from pipeline.tracking import start_run
from pipeline.training.checkpoint import check_checkpoint_provenance, load_checkpoint, load_model
from pipeline.training.common import device_name, resolve_device
from pipeline.training.denoise_data import (
    add_noise,
    check_scene,
    fit_subspace,
    scale_bands,
    unscale_bands,
)
from pipeline.training.denoiser import load_denoiser, trained_net

log = logging.getLogger(__name__)

RUN_NAME = "robustness"
NOISE_PART, TUNE_PART = 2, 3


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _ranking(params: dict, models: list[str]) -> tuple[str, str, float]:
    """(best baseline, best learned model, the σ they were ranked at) from `denoise_evaluate`."""
    out = denoise_dir(params)
    try:
        evaluation = json.loads((out / "evaluation.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: missing; run `hsi denoise_evaluate` first") from e
    sigma = evaluation["best_baseline_at_sigma"]
    scores = metrics[f"sigma{sigma:g}"]
    missing = [m for m in models if m not in scores]
    if missing:
        raise DataError(f"{out / 'metrics.json'}: no scores for {missing}; run it again")
    best = max(models, key=lambda m: scores[m]["mpsnr"] or 0)
    return evaluation["best_baseline"], best, sigma


def run(params: dict) -> dict:
    dp, ev = params["denoise"], params["evaluate"]
    device = resolve_device(params["train"]["device"])
    amp = params["train"]["amp"]
    raw, _, manifest = load_raw(raw_dir(params), params["dataset"]["crop"])
    cube = np.asarray(raw, dtype=np.float32)
    clf_name, seed = dp["robustness_model"], dp["robustness_seed"]
    if clf_name not in params["train"]["models"] or seed not in params["train"]["seeds"]:
        raise ParamsError(
            f"'denoise.robustness_model' = {clf_name!r} / 'denoise.robustness_seed' = {seed} "
            f"must be one of 'train.models' {params['train']['models']} / 'train.seeds' "
            f"{params['train']['seeds']}"
        )
    clf_path = checkpoint_path(params, clf_name, seed)
    clf_ckpt = load_checkpoint(clf_path)
    prepared = load_prepared(params)
    check_checkpoint_provenance(
        clf_ckpt,
        prepared.meta.get("fingerprint"),
        against=str(prepared.path),
        fix=f"hsi train --model {clf_name} --seed {seed}",
    )
    classifier = load_model(clf_ckpt, device)
    pca = PCA.from_arrays(clf_ckpt["pca"])
    patch = clf_ckpt["patch"]
    if prepared.labels.shape != cube.shape[:2]:
        raise DataError(
            f"{prepared.path}: labels {prepared.labels.shape} do not match the (cropped) scene "
            f"{cube.shape[:2]}; run `hsi prepare` again"
        )
    denoisers, ckpt = {}, None
    current = raw_fingerprint(manifest, params["dataset"]["crop"])
    for name in dp["models"]:
        denoisers[name], ckpt = load_denoiser(dncnn_path(params, name), device)
        check_checkpoint_provenance(
            ckpt, current, against=str(raw_dir(params)), fix=f"hsi denoise_train --model {name}"
        )
    split = check_scene(cube, ckpt)
    baseline, best_model, ranked_at = _ranking(params, list(denoisers))
    scored = np.zeros_like(prepared.test)
    scored[split.test] = prepared.test[split.test]
    if not scored.any():
        raise DataError(
            f"no test pixel of {prepared.path} lies in the denoisers' held-out rows "
            f"{split.to_dict()['test_rows']}; nothing to score"
        )
    truth = prepared.labels[scored]

    def oa(raw_cube: np.ndarray) -> float:
        pred = predict_scene(
            classifier,
            pca.transform(raw_cube),
            patch["size"],
            padding=patch["padding"],
            device=device,
            dense=ev["dense"],
            strip_rows=ev["strip_rows"],
            batch_size=ev["batch_size"],
        )
        return float(np.mean(pred.labels[scored] == truth))

    reach = patch["size"] // 2 + max(
        trained_net(m).receptive_field // 2 for m in denoisers.values()
    )
    rows_used = slice(max(0, split.test_start - reach), cube.shape[0])

    def denoised(fn, noisy01: np.ndarray, noisy: np.ndarray) -> np.ndarray:
        """``noisy`` (raw units) with the rows in reach replaced by ``fn`` of their [0, 1]
        version; an output equal to its input (a bypassed clean cube) keeps the raw values."""
        x = noisy01[rows_used]
        den = fn(x)
        out = np.array(noisy, dtype=np.float32, copy=True)
        if not np.array_equal(den, x):
            out[rows_used] = unscale_bands(den, lo, hi)
        return out

    lo, hi = ckpt["band_min"], ckpt["band_max"]
    clean01 = scale_bands(cube, lo, hi)
    train01 = clean01[split.train]
    sub = fit_subspace(train01)
    rows = []
    for sigma in (float(s) for s in dp["robustness_sigmas"]):
        noisy01 = add_noise(clean01, sigma, [dp["seed"], round(1000 * sigma), NOISE_PART])
        noisy = cube if sigma == 0 else unscale_bands(noisy01, lo, hi)
        tuning = add_noise(train01, sigma, [dp["seed"], round(1000 * sigma), TUNE_PART])
        setting = tune_baseline(baseline, train01, tuning, sub, sigma)
        outs = {"noisy": noisy}
        outs[f"baseline_{baseline}"] = denoised(
            lambda x, st=setting, s=sigma: apply_baseline(baseline, x, st, sub, s),
            noisy01,
            noisy,
        )
        for name, model in denoisers.items():
            outs[name] = denoised(
                lambda x, m=model: denoise_cube(m, x, device=device, amp=amp, progress=True),
                noisy01,
                noisy,
            )
        scores = {k: oa(v) for k, v in outs.items()}
        row = {"sigma": sigma, "oa_noisy": scores.pop("noisy"), "oa_denoised": scores[best_model]}
        row.update({f"oa_{k}": v for k, v in scores.items()})
        rows.append(row)
        log.info("σ=%g: %s", sigma, ", ".join(f"{k} {v:.4f}" for k, v in row.items()))

    out = robustness_dir(params)
    summary = {
        "dataset": manifest["dataset"],
        "classifier": str(clf_path),
        "denoisers": {name: str(dncnn_path(params, name)) for name in denoisers},
        "oa_denoised_is": best_model,
        "best_baseline": baseline,
        "ranked_by": f"MPSNR at σ = {ranked_at:g} in {denoise_dir(params) / 'metrics.json'}",
        "noise": "white Gaussian, σ/255 of each band's training-row [min, max], all pixels/bands",
        "scored_pixels": "classifier test pixels inside the denoisers' held-out rows "
        f"{split.to_dict()['test_rows']}",
        "n_scored": int(scored.sum()),
        "denoised_rows": [rows_used.start, cube.shape[0]],
        "n_test": int(prepared.test.sum()),
        "device": device_name(device),
        "rows": rows,
    }
    write_text(out / "oa_vs_sigma.csv", rows_csv(rows))
    write_json(out / "oa_vs_sigma.json", summary)
    sig = [r["sigma"] for r in rows]
    series = {"noisy input": [100 * r["oa_noisy"] for r in rows]}
    series[f"{baseline} (best baseline)"] = [100 * r[f"oa_baseline_{baseline}"] for r in rows]
    for name in denoisers:
        series[name] = [100 * r[f"oa_{name}"] for r in rows]
    save_curve_png(
        out / "oa_vs_sigma.png",
        sig,
        series,
        xlabel="noise σ (/255 of each band's range)",
        ylabel=f"test OA (%), {int(scored.sum())} pixels in held-out rows",
        title=f"{clf_name}-seed{seed} on {manifest['dataset']}",
    )
    tags = {"stage": "robustness", "classifier": clf_path.name, "device": device_name(device)}
    with start_run(params, manifest["dataset"], RUN_NAME, tags, task="denoising") as mlrun:
        mlrun.log_prepared(prepared.meta, params, {"test": int(scored.sum())}, context="evaluation")
        mlrun.log_params(
            {
                "robustness_sigmas": ",".join(f"{s:g}" for s in sig),
                "classifier": str(clf_path),
                "denoisers": ",".join(denoisers),
                "n_scored": int(scored.sum()),
                "denoised_rows": [rows_used.start, cube.shape[0]],
            }
        )
        for row in rows:
            mlrun.log_metrics(
                {k: v for k, v in row.items() if k != "sigma"}, step=round(row["sigma"])
            )
        for name in ("oa_vs_sigma.csv", "oa_vs_sigma.json", "oa_vs_sigma.png"):
            mlrun.log_artifact(out / name)
    return summary


def main(params: dict, args) -> None:
    run(params)
