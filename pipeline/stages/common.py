"""What the stages share: every path of the project, and small glue between a stage, its
params and the core.

Paths are built here and nowhere else, so ``dvc.yaml`` and the code name the same files:
``data/raw/<dataset>/``, ``data/prepared/<dataset>/``, ``models/<dataset>/`` and
``reports/<dataset>/``. The core (data, models, training, evaluation) knows none of this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.data import prepared as prepared_io
from pipeline.naming import run_name

DATA = Path("data")
MODELS = Path("models")
REPORTS = Path("reports")


def raw_dir(params) -> Path:
    return DATA / "raw" / params.dataset.name


def manifest_path(params) -> Path:
    return raw_dir(params) / "manifest.json"


def prepared_dir(params) -> Path:
    return DATA / "prepared" / params.dataset.name


def checkpoint_path(params, model: str, seed: int) -> Path:
    return MODELS / params.dataset.name / f"{run_name(model, seed)}.pt"


def denoiser_path(params, model: str) -> Path:
    """The checkpoint of denoiser ``model``; the folder holds only denoisers, so
    `denoise_evaluate` and `robustness` depend on it as a whole."""
    return MODELS / params.dataset.name / "denoisers" / f"{model}.pt"


def denoiser_paths(params) -> dict[str, Path]:
    return {name: denoiser_path(params, name) for name in params.denoise.models}


def report_dir(params, model: str | None = None, seed: int | None = None) -> Path:
    base = REPORTS / params.dataset.name
    return base if model is None else base / run_name(model, seed)


def prediction_path(params, model: str, seed: int) -> Path:
    """Scene label maps live together so the `report` stage can depend on one folder."""
    return report_dir(params) / "predictions" / f"{run_name(model, seed)}.npy"


def denoise_dir(params) -> Path:
    return report_dir(params) / "denoise"


def robustness_dir(params) -> Path:
    return report_dir(params) / "robustness"


def study_dir(params, protocol: str) -> Path:
    return report_dir(params) / "study" / protocol


@dataclass(frozen=True)
class RunFiles:
    """Where one trained model's files go: its checkpoint, report folder and scene map."""

    name: str
    checkpoint: Path
    report: Path
    prediction: Path

    @property
    def train_json(self) -> Path:
        return self.report / "train.json"

    @property
    def metrics_json(self) -> Path:
        return self.report / "metrics.json"


def run_files(params, model: str, seed: int) -> RunFiles:
    """The `train` / `evaluate` stages' files of one model × seed."""
    return RunFiles(
        run_name(model, seed),
        checkpoint_path(params, model, seed),
        report_dir(params, model, seed),
        prediction_path(params, model, seed),
    )


def cell_files(params, protocol: str, model: str, seed: int, fold: int) -> RunFiles:
    """A study cell's files, under ``reports/<dataset>/study/<protocol>/``."""
    name = run_name(model, seed, fold)
    base = study_dir(params, protocol)
    return RunFiles(
        name,
        base / "models" / f"{name}.pt",
        base / "cells" / name,
        base / "predictions" / f"{name}.npy",
    )


def load_prepared(params) -> prepared_io.Prepared:
    """The prepared data on disk, checked to be one `prepare` run's, made from the raw cube
    that ``data/raw`` now holds."""
    return prepared_io.load(prepared_dir(params), manifest_path(params))


def save_prepared(params, data: prepared_io.Prepared) -> None:
    prepared_io.save(prepared_dir(params), data)


def epoch_logger(mlrun):
    """``on_epoch`` for the loop: each epoch's row as MLflow metrics at step = epoch."""
    return lambda row: mlrun.log_metrics(
        {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
    )
