"""Paths and prepared-data loading shared by the stages (the core knows none of this)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError


def run_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def checkpoint_path(params: dict, model: str, seed: int) -> Path:
    return Path("models") / params["dataset"]["name"] / f"{run_name(model, seed)}.pt"


def report_dir(params: dict, model: str | None = None, seed: int | None = None) -> Path:
    base = Path("reports") / params["dataset"]["name"]
    return base if model is None else base / run_name(model, seed)


def prediction_path(params: dict, model: str, seed: int) -> Path:
    """Scene label maps live together so the `report` stage can depend on one folder."""
    return report_dir(params) / "predictions" / f"{run_name(model, seed)}.npy"


@dataclass
class Prepared:
    cube: np.ndarray  # (H, W, K) float32, PCA-reduced
    labels: np.ndarray  # (H, W) int64, 0 = unlabelled
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    meta: dict
    pca: dict[str, np.ndarray]
    path: Path

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]


def load_prepared(params: dict) -> Prepared:
    path = Path("data/prepared") / params["dataset"]["name"]
    try:
        split = np.load(path / "split.npz")
        pca = np.load(path / "pca.npz")
        return Prepared(
            cube=np.load(path / "cube.npy"),
            labels=np.load(path / "labels.npy"),
            train=split["train"],
            val=split["val"],
            test=split["test"],
            meta=json.loads((path / "meta.json").read_text()),
            pca={k: pca[k] for k in pca.files},
            path=path,
        )
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: missing; run `hsi prepare` (or `dvc repro`) first") from e
