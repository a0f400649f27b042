"""Stage `train` (one model × seed of the DVC matrix): fit, keep the best-validation checkpoint."""

from __future__ import annotations

import logging

from pipeline.models import spec
from pipeline.params import flatten
from pipeline.runs import resume_fingerprint, trained_record, write_training
from pipeline.stages.common import epoch_logger, load_prepared, run_files
from pipeline.tracking import start_run
from pipeline.training.checkpoint import StateFile, resume_path
from pipeline.training.classifier import train_model
from pipeline.training.common import device_name, resolve_device

log = logging.getLogger(__name__)


def run(params, model_name: str, seed: int) -> dict:
    model_spec = spec(model_name, "classification")
    data = load_prepared(params)
    device = resolve_device(params.compute.device)
    files = run_files(params, model_name, seed)
    store = StateFile(
        resume_path(files.checkpoint), resume_fingerprint(params, model_name, seed, data)
    )
    previous = store.load() or {}
    if previous:
        log.info("%s: resuming from epoch %d", files.name, int(previous["epoch"]) + 1)
    tags = {
        "dvc_stage": f"train@{model_name}-{seed}",
        "stage": "train",
        "model": model_name,
        "seed": seed,
        "dataset": data.meta["dataset"],
        "dataset_sha256": data.meta["cube_sha256"],
        "device": device_name(device),
    }
    run_id = previous.get("mlflow_run_id")
    with start_run(params, data.meta["dataset"], files.name, tags, run_id=run_id) as mlrun:
        store.extra = {"mlflow_run_id": mlrun.run_id}
        logged = {
            k: v for k, v in flatten(params).items() if not k.startswith(("denoise.", "study."))
        }
        mlrun.log_params({**logged, "model": model_name, "seed": seed})
        mlrun.log_prepared(
            data.meta, params, {k: int(data.split[k].sum()) for k in ("train", "val", "test")}
        )
        log.info("training %s on %s", files.name, device_name(device))
        model, result = train_model(
            model_spec,
            data,
            params,
            seed,
            device=device,
            store=store,
            on_epoch=epoch_logger(mlrun),
        )
        ckpt, summary = trained_record(
            model,
            result,
            data,
            params,
            model_name,
            seed,
            device=device_name(device),
            run_id=mlrun.run_id,
            features=model_spec.features,
        )
        summary = write_training(files, ckpt, summary, result.history)
        mlrun.log_metrics(
            {
                k: summary[k] or 0.0
                for k in ("best_val_oa", "train_time_s", "best_epoch", "n_params")
            }
        )
        for name in ("history.csv", "curves.png", "train.json"):
            mlrun.log_artifact(files.report / name)
        mlrun.log_model(files.checkpoint, model_name, tags={"seed": seed})
    store.clear()
    log.info(
        "%s: best val OA %s at epoch %d, %.1f s",
        files.name,
        summary["best_val_oa"],
        summary["best_epoch"],
        summary["train_time_s"],
    )
    return summary


def main(params, args) -> None:
    run(params, args.model, args.seed)
