"""Stage `train` (one model × seed of the DVC matrix): fit, keep the best-validation checkpoint."""

from __future__ import annotations

import logging

from pipeline.models import spec
from pipeline.runs import resume_fingerprint, train_run, write_training
from pipeline.stages.common import epoch_logger, load_prepared, run_files
from pipeline.tracking import check_store, start_run
from pipeline.training.checkpoint import StateFile, resume_path
from pipeline.training.common import device_name, resolve_device

log = logging.getLogger(__name__)


def run(params, model_name: str, seed: int) -> dict:
    model_spec = spec(model_name, "classification")
    data = load_prepared(params)
    device = resolve_device(params.compute.device)
    files = run_files(params, model_name, seed)
    fp = resume_fingerprint(params, model_name, seed, data)
    store = StateFile(resume_path(files.checkpoint), fp)
    tags = {
        "dvc_stage": f"train@{model_name}-{seed}",
        "stage": "train",
        "model": model_name,
        "seed": seed,
        "dataset": data.meta["dataset"],
        "device": device_name(device),
    }
    run_id = (store.load() or {}).get("mlflow_run_id")
    with start_run(params, data.meta["dataset"], files.name, tags, run_id=run_id) as mlrun:
        store.extra = {"mlflow_run_id": mlrun.run_id}
        log.info("training %s on %s", files.name, device_name(device))
        _, ckpt, summary, history = train_run(
            model_spec, data, params, seed, device=device, store=store, mlrun=mlrun,
            on_epoch=epoch_logger(mlrun),
        )  # fmt: skip
        summary = write_training(files, ckpt, summary, history)
        for name in ("history.csv", "curves.png", "train.json"):
            mlrun.log_artifact(files.report / name)
        mlrun.log_model(files.checkpoint, model_name, tags={"seed": seed})
    store.clear()
    if "fit" in summary:
        log.info("%s: fitted in %.1f s", files.name, summary["train_time_s"])
    else:
        log.info("%s: best val OA %s at epoch %d, %.1f s", files.name, summary["best_val_oa"],
                 summary["best_epoch"], summary["train_time_s"])  # fmt: skip
    return summary


def main(params, args) -> None:
    check_store(params)  # an unusable MLflow store fails here, before any work
    run(params, args.model, args.seed)
