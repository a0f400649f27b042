"""Stage `denoise_train`: fit one denoiser of ``denoise.models`` on the training rows of the raw
scene (``hsi denoise_train --model M``; without ``--model``, each in turn)."""

from __future__ import annotations

import logging

from pipeline.errors import ParamsError
from pipeline.io import rows_csv, write_json, write_text
from pipeline.models import count_parameters, spec
from pipeline.params import flatten
from pipeline.provenance import fingerprint
from pipeline.stages.common import denoise_dir, denoiser_path, epoch_logger, raw_dir
from pipeline.tracking import check_store, start_run
from pipeline.training.checkpoint import StateFile, resume_path
from pipeline.training.common import device_name, resolve_device
from pipeline.training.denoise_data import raw_cube
from pipeline.training.denoiser import noise_record, save_denoiser, setup_denoiser, train_denoiser

log = logging.getLogger(__name__)


def run(params, name: str) -> dict:
    dp = params.denoise
    if name not in dp.models:
        raise ParamsError(f"'--model {name}' is not in 'denoise.models' = {list(dp.models)}")
    cube, manifest, data_fp = raw_cube(raw_dir(params), params.dataset.crop)
    device = resolve_device(params.compute.device)
    setup = setup_denoiser(spec(name, "denoising"), cube, params)
    ckpt = denoiser_path(params, name)
    store = StateFile(
        resume_path(ckpt.parent) / ckpt.name,  # outside the folder later stages depend on
        fingerprint({"params": setup.recorded, "data": data_fp, "device": device.type}),
    )
    tags = {"stage": "denoise_train", "model": name, "device": device_name(device)}
    run_id = (store.load() or {}).get("mlflow_run_id")
    dataset = manifest["dataset"]
    with start_run(params, dataset, name, tags, task="denoising", run_id=run_id) as mlrun:
        store.extra = {"mlflow_run_id": mlrun.run_id}
        logged = flatten({k: params[k] for k in ("dataset", "denoise", "compute")})
        mlrun.log_params({**logged, "model": name})
        mlrun.log_dataset(
            name=dataset,
            source=str(manifest["cube"].get("source", raw_dir(params))),
            sha256=manifest["cube"]["sha256"],
            shape=cube.shape,
            protocol=f"rows 0-{setup.split.train_stop - 1} train, {setup.split.test_start}- test",
            counts={"train_rows": setup.split.train_stop},
        )
        result = train_denoiser(
            setup.model.trainable_net,
            setup.model.training_planes(setup.clean),
            dp,
            device=device,
            amp=params.compute.amp,
            store=store,
            on_epoch=epoch_logger(mlrun),
        )
        summary = _write(params, name, setup, result, manifest, data_fp, list(cube.shape))
        summary.update(device=device_name(device), mlflow_run_id=mlrun.run_id)
        write_json(denoise_dir(params) / name / "train.json", summary)
        keys = ("best_val_psnr", "noisy_val_psnr", "best_epoch", "train_time_s", "n_params")
        mlrun.log_metrics({k: summary[k] for k in keys})
        for f in ("train_history.csv", "train.json"):
            mlrun.log_artifact(denoise_dir(params) / name / f)
        mlrun.log_model(ckpt, name, kind="dncnn")
    store.clear()
    log.info(
        "%s: validation PSNR %.2f dB (noisy %.2f dB) at epoch %d, %.1f s",
        name,
        result.best_score,
        summary["noisy_val_psnr"],
        result.best_epoch,
        result.wall_time_s,
    )
    return summary


def _write(params, name: str, setup, result, manifest: dict, data_fp: str, shape: list) -> dict:
    """The checkpoint (the training rows' scaling and split in it) and the training history;
    returns train.json's fields."""
    model = setup.model.to("cpu")
    lo, hi = setup.scaling
    meta = {
        "dataset": manifest["dataset"],
        "cube_sha256": manifest["cube"]["sha256"],
        "crop": list(params.dataset.crop or []),
        "shape": shape,
        "rgb_bands": list(manifest["rgb_bands"]),
        "seed": params.denoise.seed,
        "best_epoch": result.best_epoch,
        "best_val_psnr": result.best_score,
    }
    save_denoiser(
        denoiser_path(params, name),
        model=model,
        band_min=lo,
        band_max=hi,
        noise=noise_record(params.denoise),
        split=setup.split.to_dict(),
        meta=meta,
        data_fingerprint=data_fp,
        params=setup.recorded,
    )
    write_text(denoise_dir(params) / name / "train_history.csv", rows_csv(result.history))
    return {
        "model": name,
        "dataset": manifest["dataset"],
        "n_params": count_parameters(model),
        "config": setup.recorded,
        "split": setup.split.to_dict(),
        "scaling": "per-band min/max of the training rows",
        "epochs_run": len(result.history),
        "resumed_from_epoch": result.resumed_from,
        "best_epoch": result.best_epoch,
        "best_val_psnr": result.best_score,
        **result.extra,
        "train_time_s": result.wall_time_s,
        "train_patches_per_s": result.samples_per_s,
    }


def main(params, args) -> None:
    check_store(params)  # an unusable MLflow store fails here, before any work
    for name in [args.model] if getattr(args, "model", None) else params.denoise.models:
        run(params, name)
