"""Checkpoints that rebuild their model and preprocessing, loaded with ``weights_only=True``.

Only tensors, numbers, strings, lists and dicts are stored, so loading never unpickles code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import DataError
from pipeline.io import atomic_path

FORMAT_VERSION = 1


def _to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    state_dict: dict,
    model_config: dict,
    pca: dict[str, np.ndarray],
    patch: dict,
    class_names: list[str],
    meta: dict[str, Any],
) -> None:
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": state_dict,
        "model_config": dict(model_config),
        "pca": _to_tensors(pca),
        "patch": dict(patch),
        "class_names": list(class_names),
        "meta": dict(meta),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    missing = {"state_dict", "model_config", "pca", "patch", "class_names"} - set(ckpt)
    if missing:
        raise DataError(f"{path}: not a pipeline checkpoint (missing {sorted(missing)})")
    ckpt["pca"] = {k: v.numpy() for k, v in ckpt["pca"].items()}
    return ckpt


def load_model(ckpt: dict, device="cpu") -> torch.nn.Module:
    from pipeline.models import build_model

    model = build_model(**ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()
