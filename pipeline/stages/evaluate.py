"""Stage `evaluate` (one model × seed): test-split metrics, confusion reports and scene maps.

The checkpoint must have been trained on the prepared data now on disk (same fingerprint), else
nothing is written. ``classification_report.json`` is removed first and written last with the
data fingerprint, so `report` never combines the outputs of an interrupted evaluation.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from pipeline.evaluation.figures import (
    CORRECT_COLOUR,
    ERROR_COLOUR,
    class_palette,
    error_map,
    false_colour,
    label_to_rgb,
    save_confusion_png,
    save_map,
    save_map_panel,
)
from pipeline.evaluation.inference import predict_scene
from pipeline.evaluation.metrics import classification_metrics, confusion_matrix
from pipeline.io import save_npy, write_json, write_text
from pipeline.stages.common import (
    checkpoint_path,
    load_prepared,
    prediction_path,
    report_dir,
    run_name,
)
from pipeline.tracking import recorded_run_id, start_run
from pipeline.training.checkpoint import check_checkpoint_provenance, load_checkpoint, load_model
from pipeline.training.common import device_name, resolve_device

log = logging.getLogger(__name__)

REPORT = "classification_report.json"
"""Written last; its recorded data fingerprint is what `report` checks."""


def confusion_csv(cm: np.ndarray, names: list[str]) -> str:
    buf = io.StringIO()
    buf.write("actual\\predicted," + ",".join(f'"{n}"' for n in names) + "\n")
    for name, row in zip(names, cm, strict=True):
        buf.write(f'"{name}",' + ",".join(map(str, row)) + "\n")
    return buf.getvalue()


def confusion_records(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> list[dict]:
    """One record per test pixel: the input of `dvc plots`' confusion template."""
    return [
        {"actual": names[t], "predicted": names[p]} for t, p in zip(y_true, y_pred, strict=True)
    ]


def run(params: dict, model_name: str, seed: int) -> dict:
    data = load_prepared(params)
    device = resolve_device(params["train"]["device"])
    ckpt = load_checkpoint(checkpoint_path(params, model_name, seed))
    check_checkpoint_provenance(
        ckpt,
        data.meta.get("fingerprint"),
        against=str(data.path),
        fix=f"hsi train --model {model_name} --seed {seed}",
    )
    model = load_model(ckpt, device)
    out = report_dir(params, model_name, seed)
    (out / REPORT).unlink(missing_ok=True)
    ev, patch = params["evaluate"], ckpt["patch"]
    pred = predict_scene(
        model,
        data.cube,
        patch["size"],
        padding=patch["padding"],
        device=device,
        dense=ev["dense"],
        strip_rows=ev["strip_rows"],
        batch_size=ev["batch_size"],
        progress=True,
    )
    names = data.class_names
    y_true = data.labels[data.test] - 1
    y_pred = pred.labels[data.test] - 1
    cm = confusion_matrix(y_true, y_pred, len(names))
    report = classification_metrics(cm, names)
    metrics = {
        "oa": report["oa"],
        "aa": report["aa"],
        "kappa": report["kappa"],
        "n_test": report["n"],
        "scene_inference_s": pred.seconds,
    }
    write_json(out / "metrics.json", metrics)
    write_text(out / "confusion.csv", confusion_csv(cm, names))
    write_json(out / "confusion.json", confusion_records(y_true, y_pred, names))
    protocol = data.meta.get("protocol", params["protocol"])
    title = f"{run_name(model_name, seed)} on {data.meta['dataset']} ({protocol} protocol)"
    save_confusion_png(out / "confusion.png", cm, names, title=f"{title}: test pixels")
    save_npy(prediction_path(params, model_name, seed), pred.labels)

    palette = class_palette(len(names), data.meta["palette"])
    labelled = data.labels > 0
    rgb = false_colour(data.cube[..., :3])
    panels = [
        ("false colour (PCA 1-3)", rgb),
        ("ground truth", label_to_rgb(data.labels, palette)),
        ("prediction, whole scene", label_to_rgb(pred.labels, palette)),
        ("prediction, labelled pixels", label_to_rgb(np.where(labelled, pred.labels, 0), palette)),
        ("errors (all labelled pixels)", error_map(data.labels, pred.labels)),
    ]
    save_map_panel(
        out / "maps.png",
        panels,
        names,
        palette,
        title=f"{title}: test OA {100 * report['oa']:.2f}%",
        extra_legend={"correct": CORRECT_COLOUR, "error": ERROR_COLOUR},
    )
    save_map(out / "prediction.png", pred.labels, names, title=title, palette=palette)
    write_json(
        out / REPORT,
        {
            **report,
            "inference": {
                "method": pred.method,
                "seconds": pred.seconds,
                "device": device_name(device),
            },
            "not_scored": data.meta.get("split", {}).get("not_scored_note"),
            "label_values": data.meta.get("label_values"),
            "provenance": {
                "data_fingerprint": data.meta["fingerprint"],
                "checkpoint": str(ckpt["path"]),
                "params_fingerprint": ckpt["provenance"].get("params_fingerprint"),
            },
        },
    )

    tags = {"stage": "evaluate", "model": model_name, "seed": seed, "device": device_name(device)}
    name = run_name(model_name, seed)
    # the checkpoint's own record first: a train.json left by an earlier, interrupted run
    # must not send these metrics to another run
    train_run = ckpt["meta"].get("mlflow_run_id") or recorded_run_id(out / "train.json")
    with start_run(params, data.meta["dataset"], name, tags, run_id=train_run) as mlrun:
        mlrun.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        for name in (
            "metrics.json",
            "classification_report.json",
            "confusion.csv",
            "confusion.png",
            "maps.png",
            "prediction.png",
        ):
            mlrun.log_artifact(out / name, "evaluation")
    log.info(
        "%s: test OA %.4f, AA %.4f, kappa %.4f; scene map (%s) in %.3f s",
        run_name(model_name, seed),
        report["oa"],
        report["aa"],
        report["kappa"],
        pred.method,
        pred.seconds,
    )
    return metrics


def main(params: dict, args) -> None:
    run(params, args.model, args.seed)
