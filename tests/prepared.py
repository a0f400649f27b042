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
    meta = {
        "dataset": name,
        "class_names": [chr(ord("a") + i) for i in range(n_classes)],
        "n_classes": n_classes,
        "rgb_bands": [0, 1, 2],
        "palette": None,
        "cube_sha256": "0" * 64,
        "raw_bands": cube.shape[-1],
        "fingerprint": fp or prepared_fingerprint(cube, labels, split, pca),
    }
    (d / "meta.json").write_text(json.dumps(meta))
    return d
