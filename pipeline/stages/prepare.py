"""Stage `prepare`: validate the raw scene, split it, fit PCA, write data/prepared/<dataset>/."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.data.fetching import load_raw
from pipeline.data.loaders import resolve_key
from pipeline.data.pca import fit_pca
from pipeline.data.splits import split_from_params, split_summary
from pipeline.errors import DataError
from pipeline.evaluation.figures import false_colour, save_split_png
from pipeline.io import save_npy, save_npz, write_json
from pipeline.provenance import prepared_fingerprint
from pipeline.stages.common import prepared_dir, raw_dir

log = logging.getLogger(__name__)


def check_scene(cube: np.ndarray, gt: np.ndarray, manifest: dict, where: Path) -> None:
    """Fail with the file, key and problem on non-finite values, shape or label mismatches."""
    cube_file = f"{where / manifest['cube']['file']} (key {manifest['cube'].get('key')!r})"
    gt_file = f"{where / manifest['gt']['file']} (key {manifest['gt'].get('key')!r})"
    if cube.ndim != 3:
        raise DataError(f"{cube_file}: expected an H×W×bands cube, got shape {cube.shape}")
    if np.issubdtype(cube.dtype, np.floating):
        bad = ~np.isfinite(cube)
        if bad.any():
            r, c, b = np.argwhere(bad)[0]
            raise DataError(
                f"{cube_file}: {int(bad.sum())} NaN/Inf values (first at row {r}, col {c}, band {b})"
            )
    if gt.shape != cube.shape[:2]:
        raise DataError(
            f"{gt_file}: ground truth shape {gt.shape} does not match the cube's "
            f"{cube.shape[:2]} from {cube_file}"
        )
    n_classes = len(manifest["class_names"])
    if gt.min() < 0 or gt.max() > n_classes:
        raise DataError(
            f"{gt_file}: labels must lie in 0..{n_classes} (0 = unlabelled, {n_classes} "
            f"classes), found {int(gt.min())}..{int(gt.max())}"
        )
    if not (gt > 0).any():
        raise DataError(f"{gt_file}: no labelled pixels")


def check_custom_keys(custom: dict) -> None:
    """Resolve the user's .mat keys on their own files first, so a wrong key is named with the
    keys actually found even when `fetch` has not run."""
    resolve_key(custom["cube"], custom["cube_key"], ndim=3)
    resolve_key(custom["gt"], custom["gt_key"], ndim=2)


def run(params: dict) -> dict:
    src = raw_dir(params)
    out = prepared_dir(params)
    if params["dataset"]["name"] == "custom":
        check_custom_keys(params["dataset"]["custom"])
    cube, gt, manifest = load_raw(src, params["dataset"]["crop"])
    check_scene(cube, gt, manifest, src)
    labels = gt.astype(np.int64)

    sp, patch = params["split"], params["patch"]["size"]
    split = split_from_params(labels, sp, patch)

    pc = params["pca"]
    k = pc["components"] or manifest["pca_components"]
    pixels = cube.reshape(-1, cube.shape[-1])
    fit_mask = (split.train | split.val) if pc["fit_on"] == "train" else np.ones(labels.shape, bool)
    pca = fit_pca(pixels[fit_mask.ravel()], k, whiten=pc["whiten"], scale=pc["scale"])
    reduced = pca.transform(cube)

    summary = split_summary(labels, split, patch, manifest["class_names"])
    summary["dataset"] = manifest["dataset"]
    summary["labelled"] = int((labels > 0).sum())
    summary["shape"] = list(labels.shape)

    # meta.json, with the fingerprint of the arrays, is removed first and written last: an
    # interrupted prepare leaves no folder that a later stage accepts
    (out / "meta.json").unlink(missing_ok=True)
    masks = {k: getattr(split, k) for k in ("train", "val", "test", "guard", "excluded")}
    save_npy(out / "cube.npy", reduced)
    save_npy(out / "labels.npy", labels)
    save_npz(out / "split.npz", **masks)
    save_npz(out / "pca.npz", **pca.to_arrays())
    write_json(
        out / "pca.json",
        {
            "components": k,
            "fit_on": pc["fit_on"],
            "fit_pixels": int(fit_mask.sum()),
            "whiten": pc["whiten"],
            "scale": pc["scale"],
            "global_scale": pca.scale,
            "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
            "explained_variance_ratio_total": float(pca.explained_variance_ratio.sum()),
        },
    )
    write_json(out / "split.json", summary)
    rgb = false_colour(cube, manifest["rgb_bands"])
    shown = {"train": split.train, "val": split.val, "test": split.test}
    if split.guard.any():
        shown["guard band"] = split.guard
    title = (
        f"{manifest['dataset']}: {params['protocol']} protocol, {sp['mode']} split, leakage "
        f"{100 * summary['leakage_share']:.2f}% of test pixels"
    )
    save_split_png(out / "split.png", rgb, shown, title=title)
    write_json(
        out / "meta.json",
        {
            "dataset": manifest["dataset"],
            "title": manifest.get("title", manifest["dataset"]),
            "class_names": manifest["class_names"],
            "n_classes": len(manifest["class_names"]),
            "shape": list(reduced.shape),
            "raw_bands": int(cube.shape[-1]),
            "crop": params["dataset"]["crop"],
            "rgb_bands": manifest["rgb_bands"],
            "palette": manifest["palette"],
            "cube_sha256": manifest["cube"]["sha256"],
            "gt_sha256": manifest["gt"]["sha256"],
            "label_values": manifest["gt"].get("label_values"),  # file value of class k: [k-1]
            "fingerprint": prepared_fingerprint(reduced, labels, masks, pca.to_arrays()),
            "protocol": params["protocol"],
            "split": {k: summary[k] for k in ("mode", "guard", "not_scored", "not_scored_note")},
        },
    )
    log.info(
        "prepared %s: cube %s, %d labelled, train pool %d, test %d, leakage %.2f%%",
        manifest["dataset"],
        reduced.shape,
        summary["labelled"],
        summary["counts"]["train_pool"],
        summary["counts"]["test"],
        100 * summary["leakage_share"],
    )
    return summary


def main(params: dict, args) -> None:
    run(params)
