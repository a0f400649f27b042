"""What the stages share: every output path, and loading the prepared data.

Paths are built here and nowhere else, so ``dvc.yaml`` and the code name the same files:
``data/raw/<dataset>/``, ``data/prepared/<dataset>/``, ``models/<dataset>/`` and
``reports/<dataset>/``. The core (data, models, training, evaluation) knows none of this. The
raw scene, cropped by ``dataset.crop``, is ``load_raw(raw_dir(params), params["dataset"]["crop"])``
(:func:`pipeline.data.fetching.load_raw`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.provenance import check_prepared

DATA = Path("data")
MODELS = Path("models")
REPORTS = Path("reports")


def run_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def raw_dir(params: dict) -> Path:
    return DATA / "raw" / params["dataset"]["name"]


def prepared_dir(params: dict) -> Path:
    return DATA / "prepared" / params["dataset"]["name"]


def checkpoint_path(params: dict, model: str, seed: int) -> Path:
    return MODELS / params["dataset"]["name"] / f"{run_name(model, seed)}.pt"


def dncnn_path(params: dict, model: str = "dncnn") -> Path:
    """The checkpoint of denoiser ``model`` (dncnn, dncnn_subspace, dncnn_spectral); the folder
    holds only denoisers, so `denoise_evaluate` and `robustness` depend on it as a whole."""
    return MODELS / params["dataset"]["name"] / "denoisers" / f"{model}.pt"


def report_dir(params: dict, model: str | None = None, seed: int | None = None) -> Path:
    base = REPORTS / params["dataset"]["name"]
    return base if model is None else base / run_name(model, seed)


def prediction_path(params: dict, model: str, seed: int) -> Path:
    """Scene label maps live together so the `report` stage can depend on one folder."""
    return report_dir(params) / "predictions" / f"{run_name(model, seed)}.npy"


def denoise_dir(params: dict) -> Path:
    return report_dir(params) / "denoise"


def robustness_dir(params: dict) -> Path:
    return report_dir(params) / "robustness"


def history_csv(history: list[dict]) -> str:
    """Per-epoch records as CSV (the union of their keys as columns), for DVC plots."""
    cols = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


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
    path = prepared_dir(params)
    try:
        split = np.load(path / "split.npz")
        pca = np.load(path / "pca.npz")
        data = Prepared(
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
    masks = {k: split[k] for k in split.files}
    check_prepared(str(path), data.meta, data.cube, data.labels, masks, data.pca)
    return data
