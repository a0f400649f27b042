"""Stage `robustness`: HybridSN test OA on a noisy scene, directly and after DnCNN denoising.

For each σ of ``denoise.robustness_sigmas`` white Gaussian noise of σ/255 is added to every band
of the (cropped) raw scene in the per-band [0, 1] domain of the DnCNN checkpoint and mapped back
to raw units; the trained ``hybridsn`` of the first seed of ``train.seeds`` then classifies the
scene through its own fitted PCA, once as it is and once after band-by-band DnCNN denoising, and
OA is scored on the test pixels of ``data/prepared/<dataset>/split.npz``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from pipeline.data.pca import PCA
from pipeline.errors import DataError
from pipeline.evaluation.denoise import denoise_cube
from pipeline.evaluation.figures import save_curve_png
from pipeline.evaluation.inference import predict_scene
from pipeline.io import write_json, write_text
from pipeline.stages.common import checkpoint_path, load_prepared
from pipeline.stages.denoise_evaluate import check_scene
from pipeline.stages.denoise_train import dncnn_path, raw_scene
from pipeline.tracking import start_run
from pipeline.training.checkpoint import check_checkpoint_provenance, load_checkpoint, load_model
from pipeline.training.common import device_name, resolve_device
from pipeline.training.denoiser import add_noise, load_denoiser, scale_bands, unscale_bands

log = logging.getLogger(__name__)

CLASSIFIER = "hybridsn"
RUN_NAME = "robustness"
NOISE_PART = 2


def robustness_dir(params: dict) -> Path:
    return Path("reports") / params["dataset"]["name"] / "robustness"


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["sigma", "oa_noisy", "oa_denoised"], lineterminator="\n")
    w.writeheader()
    w.writerows({k: row[k] for k in w.fieldnames} for row in rows)
    return buf.getvalue()


def _test_pixels(params: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    path = Path("data/prepared") / params["dataset"]["name"]
    try:
        labels = np.load(path / "labels.npy")
        test = np.load(path / "split.npz")["test"]
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: missing; run `hsi prepare` (or `dvc repro`) first") from e
    if labels.shape != shape or test.shape != shape:
        raise DataError(
            f"{path}: labels {labels.shape} / test mask {test.shape} do not match the (cropped) "
            f"scene {shape}; run `hsi prepare` again"
        )
    return labels, test


def run(params: dict) -> dict:
    dp, ev = params["denoise"], params["evaluate"]
    device = resolve_device(params["train"]["device"])
    amp = params["train"]["amp"]
    cube, manifest = raw_scene(params)
    seed = params["train"]["seeds"][0]
    clf_path = checkpoint_path(params, CLASSIFIER, seed)
    clf_ckpt = load_checkpoint(clf_path)
    prepared = load_prepared(params)
    check_checkpoint_provenance(
        clf_ckpt,
        prepared.meta.get("fingerprint"),
        against=str(prepared.path),
        fix=f"hsi train --model {CLASSIFIER} --seed {seed}",
    )
    classifier = load_model(clf_ckpt, device)
    pca = PCA.from_arrays(clf_ckpt["pca"])
    patch = clf_ckpt["patch"]
    dn_path = dncnn_path(params)
    denoiser, dn_ckpt = load_denoiser(dn_path, device)
    check_scene(cube, dn_ckpt, dn_path)
    lo, hi = dn_ckpt["band_min"], dn_ckpt["band_max"]
    labels, test = _test_pixels(params, cube.shape[:2])
    truth = labels[test]

    def oa(raw: np.ndarray) -> float:
        pred = predict_scene(
            classifier,
            pca.transform(raw),
            patch["size"],
            padding=patch["padding"],
            device=device,
            dense=ev["dense"],
            strip_rows=ev["strip_rows"],
            batch_size=ev["batch_size"],
        )
        return float(np.mean(pred.labels[test] == truth))

    clean01 = scale_bands(cube, lo, hi)
    rows = []
    for sigma in (float(s) for s in dp["robustness_sigmas"]):
        noisy01 = add_noise(clean01, sigma, [dp["seed"], round(1000 * sigma), NOISE_PART])
        noisy = cube if sigma == 0 else unscale_bands(noisy01, lo, hi)
        denoised01 = denoise_cube(denoiser, noisy01, device=device, amp=amp, progress=True)
        row = {
            "sigma": sigma,
            "oa_noisy": oa(noisy),
            "oa_denoised": oa(unscale_bands(denoised01, lo, hi)),
        }
        rows.append(row)
        log.info(
            "σ=%g: OA %.4f noisy, %.4f after DnCNN", sigma, row["oa_noisy"], row["oa_denoised"]
        )

    out = robustness_dir(params)
    summary = {
        "dataset": manifest["dataset"],
        "classifier": str(clf_path),
        "denoiser": str(dn_path),
        "denoiser_noise": dn_ckpt["noise"],
        "noise": "white Gaussian, σ/255 of each band's [min, max] range, all pixels and bands",
        "n_test": int(test.sum()),
        "device": device_name(device),
        "rows": rows,
    }
    write_text(out / "oa_vs_sigma.csv", rows_csv(rows))
    write_json(out / "oa_vs_sigma.json", summary)
    sig = [r["sigma"] for r in rows]
    save_curve_png(
        out / "oa_vs_sigma.png",
        sig,
        {
            "noisy input": [100 * r["oa_noisy"] for r in rows],
            "DnCNN-denoised": [100 * r["oa_denoised"] for r in rows],
        },
        xlabel="noise σ (/255 of each band's range)",
        ylabel="test OA (%)",
        title=f"{CLASSIFIER}-seed{seed} on {manifest['dataset']}",
    )
    tags = {"stage": "robustness", "classifier": clf_path.name, "device": device_name(device)}
    with start_run(params, manifest["dataset"], RUN_NAME, tags, task="denoising") as mlrun:
        mlrun.log_params(
            {
                "robustness_sigmas": ",".join(f"{s:g}" for s in sig),
                "classifier": str(clf_path),
                "denoiser": str(dn_path),
            }
        )
        for row in rows:
            mlrun.log_metrics(
                {"oa_noisy": row["oa_noisy"], "oa_denoised": row["oa_denoised"]},
                step=round(row["sigma"]),
            )
        for name in ("oa_vs_sigma.csv", "oa_vs_sigma.json", "oa_vs_sigma.png"):
            mlrun.log_artifact(out / name)
    return summary


def main(params: dict, args) -> None:
    run(params)
