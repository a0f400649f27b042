"""Stage `evaluate` (one model × seed): test-split metrics, confusion reports and scene maps.

The checkpoint must have been trained on the prepared data now on disk (same fingerprint), else
nothing is written. ``metrics.json`` and ``classification_report.json`` are written last and
record the prepared data's fingerprint and the checkpoint's and scene map's sha256, so `report`
refuses an evaluation of an older checkpoint or an interrupted one.
"""

from __future__ import annotations

import logging

from pipeline.evaluation.classification import evaluate_classifier
from pipeline.io import sha256_file
from pipeline.runs import write_evaluation
from pipeline.stages.common import load_prepared, run_files
from pipeline.tracking import check_store, recorded_run_id, start_run
from pipeline.training.checkpoint import check_checkpoint_provenance, load_checkpoint, load_model
from pipeline.training.common import device_name, resolve_device

log = logging.getLogger(__name__)


def run(params, model_name: str, seed: int) -> dict:
    data = load_prepared(params)
    device = resolve_device(params.compute.device)
    files = run_files(params, model_name, seed)
    ckpt = load_checkpoint(files.checkpoint)
    check_checkpoint_provenance(
        ckpt,
        data.fingerprint,
        against=str(data.path),
        fix=f"hsi train --model {model_name} --seed {seed}",
    )
    checkpoint_sha256 = sha256_file(files.checkpoint)
    model = load_model(ckpt, device)
    ev = evaluate_classifier(
        model,
        data,
        ckpt["patch"],
        params.inference,
        device,
        features=ckpt["meta"].get("features", "pca"),
        progress=True,
    )
    metrics = write_evaluation(
        files, data, ev, checkpoint_sha256=checkpoint_sha256, device=device_name(device)
    )
    tags = {"stage": "evaluate", "model": model_name, "seed": seed, "device": device_name(device)}
    # the checkpoint's own record first: a train.json left by an earlier, interrupted run
    # must not send these metrics to another run
    train_run = ckpt["meta"].get("mlflow_run_id") or recorded_run_id(files.train_json)
    with start_run(params, data.meta["dataset"], files.name, tags, run_id=train_run) as mlrun:
        mlrun.log_metrics({f"test_{k}": v for k, v in ev.metrics.items()})
        for name in (
            "metrics.json",
            "classification_report.json",
            "confusion.csv",
            "confusion.png",
            "maps.png",
            "prediction.png",
        ):
            mlrun.log_artifact(files.report / name, "evaluation")
    log.info(
        "%s: test OA %.4f, AA %.4f, kappa %.4f; scene map (%s) in %.3f s",
        files.name,
        ev.report["oa"],
        ev.report["aa"],
        ev.report["kappa"],
        ev.method,
        ev.seconds,
    )
    return metrics


def main(params, args) -> None:
    check_store(params)  # an unusable MLflow store fails here, before any work
    run(params, args.model, args.seed)
