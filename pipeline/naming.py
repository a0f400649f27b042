"""Names of trained runs, the same in file names, MLflow run names and reports."""

from __future__ import annotations


def run_name(model: str, seed: int, fold: int | None = None) -> str:
    """``hybridsn-seed0``, or ``hybridsn-seed0-fold2`` for a cell of a k-fold study."""
    return f"{model}-seed{seed}" + ("" if fold is None else f"-fold{fold}")
