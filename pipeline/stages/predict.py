"""`hsi predict`: a user's own scene through a trained checkpoint (a file, or a registered MLflow
model ``models:/NAME/VERSION``) and its fitted PCA."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.data.loaders import load_cube
from pipeline.data.pca import PCA
from pipeline.errors import DataError
from pipeline.evaluation.figures import class_palette, save_map
from pipeline.evaluation.inference import predict_scene
from pipeline.io import save_npy
from pipeline.params import load_params
from pipeline.tracking import checkpoint_file
from pipeline.training.checkpoint import load_checkpoint, load_model
from pipeline.training.common import resolve_device

log = logging.getLogger(__name__)


def run(
    checkpoint: str,
    cube_path: str,
    key: str | None = None,
    out: str | None = None,
    device: str = "auto",
    params: dict | None = None,
) -> Path:
    with checkpoint_file(checkpoint, params) as path:
        ckpt = load_checkpoint(path)
    cube = load_cube(cube_path, key)
    pca = PCA.from_arrays(ckpt["pca"])
    where = f"{cube_path}" + (f" (key {key!r})" if key else "")
    if cube.shape[-1] != pca.n_bands:
        raise DataError(
            f"{where}: the cube has {cube.shape[-1]} bands but {checkpoint} was trained on "
            f"{pca.n_bands}-band data (its PCA expects {pca.n_bands} bands)"
        )
    if np.issubdtype(cube.dtype, np.floating) and not np.isfinite(cube).all():
        raise DataError(f"{where}: the cube holds NaN or Inf values")
    reduced = pca.transform(cube)
    dev = resolve_device(device)
    model = load_model(ckpt, dev)
    patch = ckpt["patch"]
    pred = predict_scene(
        model, reduced, patch["size"], padding=patch["padding"], device=dev, progress=True
    )
    src = Path(cube_path)
    out_dir = Path(out) if out else src.parent
    stem = src.stem
    save_npy(out_dir / f"{stem}_map.npy", pred.labels)
    names = ckpt["class_names"]
    save_map(
        out_dir / f"{stem}_map.png",
        pred.labels,
        names,
        title=f"{stem}: {ckpt['model_config']['name']}",
        palette=class_palette(len(names), ckpt["meta"].get("palette")),
    )
    log.info(
        "map of %s (%d×%d) written to %s in %.2f s (%s)",
        src.name,
        *pred.labels.shape,
        out_dir / f"{stem}_map.npy",
        pred.seconds,
        pred.method,
    )
    return out_dir / f"{stem}_map.npy"


def main(params, args) -> None:
    if params is None and args.checkpoint.startswith("models:/") and Path(args.params).is_file():
        params = load_params(args.params)  # its tracking.uri names the registry
    run(args.checkpoint, args.cube, args.key, args.out, args.device, params)
