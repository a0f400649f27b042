"""A prepared-data folder as `hsi prepare` writes it, for tests of the stages that read one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.provenance import prepared_fingerprint


def write_prepared(root: Path, name: str, cube, labels, split: dict, pca: dict, fp=None) -> Path:
    """``data/prepared/<name>/`` under ``root``; classes named a, b, c, ...; returns the folder."""
    d = root / "data" / "prepared" / name
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "cube.npy", cube)
    np.save(d / "labels.npy", labels)
    np.savez_compressed(d / "split.npz", **split)
    np.savez_compressed(d / "pca.npz", **pca)
    n_classes = int(labels.max())
    manifest = root / "data" / "raw" / name / "manifest.json"
    cube_sha = (
        json.loads(manifest.read_text())["cube"]["sha256"] if manifest.is_file() else "0" * 64
    )
    meta = {
        "dataset": name,
        "class_names": [chr(ord("a") + i) for i in range(n_classes)],
        "n_classes": n_classes,
        "rgb_bands": [0, 1, 2],
        "palette": None,
        "cube_sha256": cube_sha,  # made from the fetched raw cube, when there is one
        "raw_bands": cube.shape[-1],
        "fingerprint": fp or prepared_fingerprint(cube, labels, split, pca),
    }
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def prepared_data(cube, labels, train, val, test=None, **views):
    """In-memory prepared data for the training core: masks, and optional input views
    (``view_train=...``) as k-fold would give them."""
    from pipeline.data.prepared import Prepared

    test = test if test is not None else (labels > 0) & ~train & ~val
    split = {"train": train, "val": val, "test": test, **views}
    n = int(labels.max())
    meta = {"class_names": [chr(ord("a") + i) for i in range(n)], "fingerprint": "test"}
    return Prepared(cube, labels, split, meta, {})


def train_cfg(**changes):
    """The validated ``train`` section with ``changes``."""
    from pipeline.params import defaults

    return defaults().override({f"train.{k}": v for k, v in changes.items()}).train


def denoise_cfg(**changes):
    """The validated ``denoise`` section with ``changes``."""
    from pipeline.params import defaults

    return defaults().override({f"denoise.{k}": v for k, v in changes.items()}).denoise
