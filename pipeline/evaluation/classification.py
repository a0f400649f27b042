"""Scoring a trained classifier on prepared data: the scene map and the test-pixel metrics.

The test input shows what the split's test view allows (k-fold with ``context: own``: only the
test blocks; the rest holds the padding value 0), so a test prediction never depends on a
training pixel's value. The one path for the `evaluate` stage and every study cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.data.prepared import Prepared
from pipeline.evaluation.inference import predict_scene
from pipeline.evaluation.metrics import classification_metrics, confusion_matrix


@dataclass
class Evaluation:
    labels: np.ndarray  # (H, W) predicted classes 1..C of every pixel
    cm: np.ndarray  # (C, C) confusion matrix of the test pixels
    report: dict  # classification_metrics of cm
    method: str  # dense, shared or patches
    seconds: float

    @property
    def metrics(self) -> dict:
        """What metrics.json holds (DVC metrics)."""
        return {
            "oa": self.report["oa"],
            "aa": self.report["aa"],
            "kappa": self.report["kappa"],
            "n_test": self.report["n"],
            "scene_inference_s": self.seconds,
        }


def evaluate_classifier(
    model: nn.Module,
    data: Prepared,
    patch: dict,
    inference: Any,
    device: torch.device | str = "cpu",
    *,
    features: str = "pca",
    progress: bool = False,
) -> Evaluation:
    """Classify every pixel of the test input (``patch``: the checkpoint's size and padding;
    ``features``: what the model reads, as its checkpoint records) and score the test pixels."""
    pred = predict_scene(
        model,
        data.input_cube("test", features),
        patch["size"],
        padding=patch["padding"],
        device=device,
        dense=inference.dense,
        strip_rows=inference.strip_rows,
        batch_size=inference.batch_size,
        progress=progress,
    )
    names = data.class_names
    y_true = data.labels[data.test] - 1
    y_pred = pred.labels[data.test] - 1
    cm = confusion_matrix(y_true, y_pred, len(names))
    return Evaluation(pred.labels, cm, classification_metrics(cm, names), pred.method, pred.seconds)
