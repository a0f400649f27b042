"""Stage `robustness`: a trained classifier's test OA on a noisy scene, directly, after the best
baseline and after each denoiser of ``denoise.models``.

For each σ of ``denoise.robustness_sigmas`` white Gaussian noise of σ/255 is added to every band
of the (cropped) raw scene in the denoisers' per-band [0, 1] domain and mapped back to raw units;
the classifier ``denoise.robustness_model`` of seed ``denoise.robustness_seed`` then classifies
the scene through its own fitted PCA. OA is scored only on the classifier's test pixels that lie
in the denoisers' held-out rows, which no denoiser was trained on (their count is in the output).
Denoisers and baselines run on the rows that can reach a scored pixel (the held-out rows, plus
the classifier's patch radius and the network's receptive-field radius above them). The best
baseline and the ``oa_denoised`` column's denoiser are those with the highest MPSNR in
`denoise_evaluate`'s report, whose recorded checkpoints must be the ones on disk.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from pipeline.data.pca import PCA
from pipeline.errors import DataError
from pipeline.evaluation.denoise import robustness_rows, sigma_key
from pipeline.evaluation.figures import save_curve_png
from pipeline.evaluation.inference import predict_scene
from pipeline.io import rows_csv, write_json, write_text
from pipeline.provenance import check_same_file
from pipeline.stages.common import (
    denoise_dir,
    denoiser_paths,
    load_prepared,
    raw_dir,
    robustness_dir,
    run_files,
)
from pipeline.tracking import check_store, start_run
from pipeline.training.checkpoint import check_checkpoint_provenance, load_checkpoint, load_model
from pipeline.training.common import device_name, resolve_device
from pipeline.training.denoise_data import RowSplit, raw_cube
from pipeline.training.denoiser import load_denoisers

log = logging.getLogger(__name__)


def run(params) -> dict:
    dp = params.denoise
    device = resolve_device(params.compute.device)
    cube, manifest, raw_fp = raw_cube(raw_dir(params), params.dataset.crop)
    prepared = load_prepared(params)
    files = run_files(params, dp.robustness_model, dp.robustness_seed)
    oa_on, patch_size = _classifier_oa(params, files, prepared, device)
    denoisers, ckpts = load_denoisers(
        denoiser_paths(params), cube, raw_fp, raw_dir=str(raw_dir(params)), device=device
    )
    best_baseline, best_model, ranked_at = _ranking(params, ckpts)
    ckpt = next(iter(ckpts.values()))
    split = RowSplit.from_dict(ckpt["split"])
    scored = np.zeros_like(prepared.test)
    scored[split.test] = prepared.test[split.test]
    if not scored.any():
        raise DataError(
            f"no test pixel of {prepared.path} lies in the denoisers' held-out rows "
            f"{split.to_dict()['test_rows']}; nothing to score"
        )
    reach = patch_size // 2 + max(m.receptive_field // 2 for m in denoisers.values())
    rows = robustness_rows(
        cube, (ckpt["band_min"], ckpt["band_max"]), split.train,
        slice(max(0, split.test_start - reach), cube.shape[0]), lambda raw: oa_on(raw, scored),
        denoisers, best_baseline,
        [float(s) for s in dp.robustness_sigmas], dp.seed, device=device, amp=params.compute.amp,
    )  # fmt: skip
    summary = {
        "dataset": manifest["dataset"],
        "classifier": str(files.checkpoint),
        "denoisers": {n: c["path"] for n, c in ckpts.items()},
        "oa_denoised_is": best_model,
        "best_baseline": best_baseline,
        "ranked_by": f"MPSNR at σ = {ranked_at:g} in {denoise_dir(params) / 'metrics.json'}",
        "noise": "white Gaussian, σ/255 of each band's training-row [min, max], all pixels/bands",
        "scored_pixels": f"test pixels inside the held-out rows {split.to_dict()['test_rows']}",
        "n_scored": int(scored.sum()),
        "n_test": int(prepared.test.sum()),
        "device": device_name(device),
        "rows": [{"sigma": r["sigma"], "oa_noisy": r["oa_noisy"],
                  "oa_denoised": r[f"oa_{best_model}"], **r} for r in rows],
    }  # fmt: skip
    _write(params, summary, manifest["dataset"], files.name, list(denoisers), prepared, scored)
    return summary


def _classifier_oa(params, files, prepared, device):
    """``oa(raw cube, scored)``: the classifier's OA on the ``scored`` pixels, through its own
    PCA; and its patch size. Its checkpoint must come from the prepared data on disk."""
    dp, inf = params.denoise, params.inference
    ckpt = load_checkpoint(files.checkpoint)
    check_checkpoint_provenance(
        ckpt, prepared.fingerprint, against=str(prepared.path),
        fix=f"hsi train --model {dp.robustness_model} --seed {dp.robustness_seed}",
    )  # fmt: skip
    classifier, pca, patch = load_model(ckpt, device), PCA.from_arrays(ckpt["pca"]), ckpt["patch"]

    def oa(raw: np.ndarray, scored: np.ndarray) -> float:
        pred = predict_scene(
            classifier, pca.transform(raw), patch["size"], padding=patch["padding"],
            device=device, dense=inf.dense, strip_rows=inf.strip_rows, batch_size=inf.batch_size,
        )  # fmt: skip
        return float(np.mean(pred.labels[scored] == prepared.labels[scored]))

    return oa, patch["size"]


def _ranking(params, ckpts: dict) -> tuple[str, str, float]:
    """(best baseline, best denoiser, the σ they were ranked at) from `denoise_evaluate`'s
    report, which must have evaluated exactly the denoiser checkpoints now on disk."""
    out = denoise_dir(params)
    try:
        evaluation = json.loads((out / "evaluation.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"{getattr(e, 'filename', None) or out}: missing or unreadable; run "
            "`hsi denoise_evaluate` first"
        ) from None
    for name, c in ckpts.items():
        recorded = evaluation.get("models", {}).get(name, {}).get("sha256")
        check_same_file(
            str(out / "evaluation.json"),
            recorded,
            c["sha256"],
            against=c["path"],
            fix="hsi denoise_evaluate",
            thing="denoiser checkpoint",
        )
    sigma = evaluation["best_baseline_at_sigma"]
    scores = metrics[sigma_key(sigma)]
    best = max(ckpts, key=lambda m: scores[m]["mpsnr"] or 0)
    return evaluation["best_baseline"], best, sigma


def _write(
    params, summary: dict, dataset: str, classifier: str, denoisers, prepared, scored
) -> None:
    out = robustness_dir(params)
    rows = summary["rows"]
    write_text(out / "oa_vs_sigma.csv", rows_csv(rows))
    write_json(out / "oa_vs_sigma.json", summary)
    base = summary["best_baseline"]
    series = {
        "noisy input": [100 * r["oa_noisy"] for r in rows],
        f"{base} (best baseline)": [100 * r[f"oa_baseline_{base}"] for r in rows],
    }
    series |= {n: [100 * r[f"oa_{n}"] for r in rows] for n in denoisers}
    save_curve_png(
        out / "oa_vs_sigma.png",
        [r["sigma"] for r in rows],
        series,
        xlabel="noise σ (/255 of each band's range)",
        ylabel=f"test OA (%), {summary['n_scored']} pixels in held-out rows",
        title=f"{classifier} on {dataset}",
    )
    tags = {"stage": "robustness", "classifier": classifier, "device": summary["device"]}
    with start_run(params, dataset, "robustness", tags, task="denoising") as mlrun:
        mlrun.log_prepared(prepared.meta, params, {"test": int(scored.sum())}, context="evaluation")
        mlrun.log_params(
            {
                "classifier": classifier,
                "denoisers": ",".join(denoisers),
                "n_scored": summary["n_scored"],
            }
        )
        for row in rows:
            mlrun.log_metrics(
                {k: v for k, v in row.items() if k != "sigma"}, step=round(row["sigma"])
            )
        for name in ("oa_vs_sigma.csv", "oa_vs_sigma.json", "oa_vs_sigma.png"):
            mlrun.log_artifact(out / name)


def main(params, args) -> None:
    check_store(params)  # an unusable MLflow store fails here, before any work
    run(params)
