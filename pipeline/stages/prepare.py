"""Stage `prepare`: validate the raw scene, split it, fit PCA, write data/prepared/<dataset>/."""

from __future__ import annotations

import logging

from pipeline.data.fetching import load_raw
from pipeline.data.loaders import resolve_key
from pipeline.data.prepared import prepare_scene
from pipeline.evaluation.figures import false_colour, save_split_png
from pipeline.stages.common import prepared_dir, raw_dir, save_prepared

log = logging.getLogger(__name__)


def run(params) -> dict:
    src = raw_dir(params)
    custom = params.dataset.custom
    if params.dataset.name == "custom":  # a wrong .mat key is named with the keys found
        resolve_key(custom.cube, custom.cube_key, ndim=3)
        resolve_key(custom.gt, custom.gt_key, ndim=2)
    cube, gt, manifest = load_raw(src, params.dataset.crop)
    data = prepare_scene(cube, gt, manifest, params, where=src)
    save_prepared(params, data)
    s = data.summary
    shown = {k: data.split[k] for k in ("train", "val", "test")}
    if data.split["guard"].any():
        shown["guard band"] = data.split["guard"]
    fold = f" (fold {s['fold']} of {s['folds']})" if s["mode"] == "kfold" else ""
    title = (
        f"{manifest['dataset']}: {params.protocol} protocol, {s['mode']} split{fold}, leakage "
        f"{100 * s['leakage_share']:.2f}% of test pixels"
    )
    rgb = false_colour(cube, manifest["rgb_bands"])
    save_split_png(prepared_dir(params) / "split.png", rgb, shown, title=title)
    log.info(
        "prepared %s: cube %s, %d labelled, train pool %d, test %d, leakage %.2f%%",
        manifest["dataset"],
        data.cube.shape,
        s["labelled"],
        s["counts"]["train_pool"],
        s["counts"]["test"],
        100 * s["leakage_share"],
    )
    return s


def main(params, args) -> None:
    run(params)
