"""Stage `train` (one model × seed of the DVC matrix): fit, keep the best-validation checkpoint."""

from __future__ import annotations

import logging

from pipeline.errors import ParamsError
from pipeline.evaluation.figures import save_curve_png
from pipeline.io import write_json, write_text
from pipeline.models import MODELS, build_model, count_parameters
from pipeline.params import flatten
from pipeline.stages.common import (
    checkpoint_path,
    history_csv,
    load_prepared,
    report_dir,
    run_name,
)
from pipeline.tracking import start_run
from pipeline.training.checkpoint import (
    clear_state,
    fingerprint,
    load_state,
    resume_path,
    save_checkpoint,
    save_state,
)
from pipeline.training.classifier import TrainConfig, train_classifier
from pipeline.training.common import device_name, resolve_device, seed_everything

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def save_training_curves(path, history: list[dict], title: str) -> None:
    epochs = [r["epoch"] for r in history]
    nan = float("nan")
    series = {
        f"{split} {what}": [r.get(f"{split}_{what}", nan) for r in history]
        for what in ("oa", "loss")
        for split in ("train", "val")
    }
    save_curve_png(path, epochs, series, "epoch", "OA / loss", title=title)


def run(params: dict, model_name: str, seed: int) -> dict:
    if model_name not in MODELS:
        raise ParamsError(f"--model {model_name!r} is unknown; known: {', '.join(MODELS)}")
    data = load_prepared(params)
    tp, patch = params["train"], params["patch"]
    device = resolve_device(tp["device"])
    seed_everything(seed, deterministic=device.type == "cpu")  # the initial weights too
    model = build_model(
        model_name,
        bands=data.cube.shape[-1],
        patch_size=patch["size"],
        n_classes=len(data.class_names),
        dropout=tp["dropout"],
    )
    n_params = count_parameters(model)
    cfg = TrainConfig(
        epochs=tp["epochs"],
        batch_size=tp["batch_size"],
        lr=tp["lr"],
        weight_decay=tp["weight_decay"],
        schedule=tp["schedule"],
        early_stopping=tp["early_stopping"],
        amp=tp["amp"],
        seed=seed,
        eval_batch_size=params["evaluate"]["batch_size"],
        batching=tp["batching"],
        tile_pixels=tp["tile_pixels"],
        tile_size=tp["tile_size"],
    )
    train_params = {**tp, "patch": dict(patch), "model": model_name, "seed": seed}
    train_params.pop("models", None)
    train_params.pop("seeds", None)
    name = run_name(model_name, seed)
    out_dir = report_dir(params, model_name, seed)
    ckpt_path = checkpoint_path(params, model_name, seed)
    tags = {
        "dvc_stage": f"train@{model_name}-{seed}",
        "stage": "train",
        "model": model_name,
        "seed": seed,
        "dataset": data.meta["dataset"],
        "dataset_sha256": data.meta["cube_sha256"],
        "device": device_name(device),
    }
    (out_dir / "train.json").unlink(missing_ok=True)  # never pair a new checkpoint with it
    state_file = resume_path(ckpt_path)
    state_fp = fingerprint({"params": train_params, "data": data.meta["fingerprint"]})
    state = load_state(state_file, fingerprint=state_fp)
    if state is not None:
        log.info("%s: resuming from epoch %d (%s)", name, int(state["epoch"]) + 1, state_file)
    run_id = state.get("mlflow_run_id") if state is not None else None
    with start_run(params, data.meta["dataset"], name, tags, run_id=run_id) as mlrun:
        logged = {k: v for k, v in flatten(params).items() if not k.startswith("denoise.")}
        mlrun.log_params({**logged, "model": model_name, "seed": seed, "n_params": n_params})
        mlrun.log_prepared(data.meta, params, {k: int(getattr(data, k).sum()) for k in SPLITS})
        log.info("training %s (%d parameters) on %s", name, n_params, device_name(device))
        result = train_classifier(
            model,
            data.cube,
            data.labels,
            data.train,
            data.val,
            cfg,
            patch_size=patch["size"],
            padding=patch["padding"],
            device=device,
            on_epoch=lambda row: mlrun.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
            ),
            resume=state,
            save_state=lambda s: save_state(
                state_file, {**s, "mlflow_run_id": mlrun.run_id}, fingerprint=state_fp
            ),
        )
        summary = {
            "model": model_name,
            "seed": seed,
            "n_params": n_params,
            "device": device_name(device),
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "best_val_oa": result.best_val_oa,
            "selection": "best validation OA"
            if result.best_val_oa is not None
            else "last epoch (no validation pixels)",
            "stopped_early": result.stopped_early,
            "batching": result.batching,
            "resumed_from_epoch": result.resumed_from,
            "train_time_s": result.wall_time_s,
            "train_samples_per_s": result.samples_per_s,
            "train_pixels": int(data.train.sum()),
            "val_pixels": int(data.val.sum()),
            "mlflow_run_id": mlrun.run_id,
        }
        save_checkpoint(
            ckpt_path,
            state_dict=result.state_dict,
            model_config=model.config,
            pca=data.pca,
            patch=patch,
            class_names=data.class_names,
            meta={
                **{
                    k: data.meta.get(k)
                    for k in ("dataset", "cube_sha256", "raw_bands", "rgb_bands", "palette")
                },
                "mlflow_run_id": mlrun.run_id,
                "seed": seed,
                "best_epoch": result.best_epoch,
                "best_val_oa": result.best_val_oa if result.best_val_oa is not None else -1.0,
            },
            data_fingerprint=data.meta["fingerprint"],
            params=train_params,
        )
        write_text(out_dir / "history.csv", history_csv(result.history))
        save_training_curves(out_dir / "curves.png", result.history, name)
        write_json(out_dir / "train.json", summary)
        mlrun.log_metrics(
            {
                "best_val_oa": result.best_val_oa or 0.0,
                "train_time_s": result.wall_time_s,
                "best_epoch": result.best_epoch,
                "n_params": n_params,
            }
        )
        for path in (out_dir / f for f in ("history.csv", "curves.png", "train.json")):
            mlrun.log_artifact(path)
        mlrun.log_model(ckpt_path, model_name, tags={"seed": seed})
    clear_state(state_file)
    log.info(
        "%s: best val OA %s at epoch %d, %.1f s",
        name,
        f"{result.best_val_oa:.4f}" if result.best_val_oa is not None else "n/a",
        result.best_epoch,
        result.wall_time_s,
    )
    return summary


def main(params: dict, args) -> None:
    run(params, args.model, args.seed)
