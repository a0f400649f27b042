"""Stage `denoise_train`: fit one denoiser of ``denoise.models`` on the training rows of the raw
scene (``hsi denoise_train --model M``; without ``--model``, each in turn)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.data.fetching import load_raw
from pipeline.errors import ParamsError
from pipeline.io import write_json, write_text
from pipeline.models import count_parameters
from pipeline.models.denoisers import build_denoiser
from pipeline.params import flatten
from pipeline.provenance import raw_fingerprint
from pipeline.stages.common import denoise_dir, dncnn_path, history_csv, raw_dir
from pipeline.tracking import start_run
from pipeline.training.checkpoint import clear_state, fingerprint, load_state, resume_path
from pipeline.training.common import device_name, resolve_device, seed_everything
from pipeline.training.denoise_data import (
    RANK_SIGMA,
    fit_subspace,
    row_split,
    scale_bands,
    training_planes,
    training_scaling,
)
from pipeline.training.denoiser import (
    DenoiseConfig,
    config_dict,
    model_config,
    save_denoiser,
    train_denoiser,
    trained_net,
)

log = logging.getLogger(__name__)


def denoise_config(params: dict) -> DenoiseConfig:
    dp = params["denoise"]
    return DenoiseConfig(
        sigma=float(dp["sigma"]),
        blind=dp["blind"],
        sigma_range=(float(dp["sigma_range"][0]), float(dp["sigma_range"][-1])),
        patch_size=dp["patch_size"],
        batch_size=dp["batch_size"],
        epochs=dp["epochs"],
        steps_per_epoch=dp["steps_per_epoch"],
        lr=dp["lr"],
        early_stopping=dp["early_stopping"],
        seed=dp["seed"],
        amp=params["train"]["amp"],
    )


def run(params: dict, name: str = "dncnn") -> dict:
    dp = params["denoise"]
    if name not in dp["models"]:
        raise ParamsError(f"'--model {name}' is not in 'denoise.models' = {dp['models']}")
    raw, _, manifest = load_raw(raw_dir(params), params["dataset"]["crop"])
    cube = np.asarray(raw, dtype=np.float32)
    device = resolve_device(params["train"]["device"])
    split = row_split(cube.shape[0], dp["test_fraction"])
    lo, hi = training_scaling(cube, split)
    clean = scale_bands(cube[split.train], lo, hi)
    cfg = denoise_config(params)
    seed_everything(cfg.seed, deterministic=device.type == "cpu")
    arch = {"depth": dp["depth"], "channels": dp["channels"]}
    sub = None
    if name == "dncnn_subspace":
        sub = fit_subspace(clean)
        rank = dp["rank"] or sub.rank_for(RANK_SIGMA)
        model = build_denoiser(name, **arch, bands=cube.shape[-1], rank=rank)
        model.set_subspace(sub.mean, sub.basis, sub.eigvals)
    elif name == "dncnn_spectral":
        model = build_denoiser(name, **arch, k=dp["spectral_k"])
    else:
        model = build_denoiser(name, **arch)
    planes = training_planes(
        name, clean, k=dp["spectral_k"], sub=sub, rank=getattr(model, "rank", None)
    )
    n_params = count_parameters(model)
    out = denoise_dir(params) / name
    ckpt_path = dncnn_path(params, name)
    dataset = manifest["dataset"]
    data_fp = raw_fingerprint(manifest, params["dataset"]["crop"])
    train_params = {**config_dict(cfg), **model_config(model), "test_fraction": dp["test_fraction"]}
    state_file = resume_path(ckpt_path.parent) / ckpt_path.name  # outside the DVC out folder
    state_fp = fingerprint({"params": train_params, "data": data_fp, "device": device.type})
    previous = load_state(state_file, fingerprint=state_fp) or {}
    tags = {
        "dvc_stage": "denoise_train",
        "stage": "denoise_train",
        "model": name,
        "dataset": dataset,
        "dataset_sha256": manifest["cube"]["sha256"],
        "device": device_name(device),
    }
    with start_run(
        params, dataset, name, tags, task="denoising", run_id=previous.get("mlflow_run_id")
    ) as mlrun:
        logged = {
            k: v
            for k, v in flatten(params).items()
            if k.startswith(("denoise.", "dataset.")) or k in ("train.device", "train.amp")
        }
        mlrun.log_params({**logged, "model": name, "n_params": n_params})
        mlrun.log_dataset(
            name=dataset,
            source=str(manifest["cube"].get("source", raw_dir(params))),
            sha256=manifest["cube"]["sha256"],
            shape=cube.shape,
            protocol=f"rows 0-{split.train_stop - 1} train, {split.test_start}- test",
            counts={"train_rows": split.train_stop, "test_rows": cube.shape[0] - split.test_start},
        )
        log.info(
            "training %s (%d parameters, %d training planes) on rows 0-%d of %s, %s",
            name,
            n_params,
            len(planes.table),
            split.train_stop - 1,
            dataset,
            device_name(device),
        )
        result = train_denoiser(
            trained_net(model),
            planes,
            cfg,
            device=device,
            on_epoch=lambda row: mlrun.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
            ),
            state_file=state_file,
            state_fingerprint=state_fp,
            extra_state={"mlflow_run_id": mlrun.run_id},
        )
        model.to("cpu")
        summary = {
            "model": name,
            "dataset": dataset,
            "n_params": n_params,
            "device": device_name(device),
            "config": {**model_config(model), **config_dict(cfg)},
            "patch_size_used": result.patch_size,
            "split": split.to_dict(),
            "scaling": "per-band min/max of the training rows",
            "epochs_run": len(result.history),
            "resumed_from_epoch": result.resumed_from,
            "best_epoch": result.best_epoch,
            "best_val_psnr": result.best_val_psnr,
            "initial_val_psnr": result.initial_val_psnr,
            "noisy_val_psnr": result.noisy_val_psnr,
            "train_time_s": result.wall_time_s,
            "train_patches_per_s": result.patches_per_s,
            "mlflow_run_id": mlrun.run_id,
        }
        save_denoiser(
            ckpt_path,
            model=model,
            band_min=lo,
            band_max=hi,
            noise=cfg.noise(),
            split=split.to_dict(),
            meta={
                "dataset": dataset,
                "cube_sha256": manifest["cube"]["sha256"],
                "crop": list(params["dataset"]["crop"] or []),
                "shape": list(cube.shape),
                "rgb_bands": list(manifest["rgb_bands"]),
                "seed": cfg.seed,
                "best_epoch": result.best_epoch,
                "best_val_psnr": result.best_val_psnr,
            },
            data_fingerprint=data_fp,
            params=train_params,
        )
        clear_state(state_file)
        write_text(out / "train_history.csv", history_csv(result.history))
        write_json(out / "train.json", summary)
        mlrun.log_metrics(
            {
                "best_val_psnr": result.best_val_psnr,
                "noisy_val_psnr": result.noisy_val_psnr,
                "best_epoch": result.best_epoch,
                "train_time_s": result.wall_time_s,
                "n_params": n_params,
            }
        )
        for path in (out / "train_history.csv", out / "train.json"):
            mlrun.log_artifact(Path(path))
        mlrun.log_model(ckpt_path, name, kind="dncnn")
    log.info(
        "%s: validation PSNR %.2f dB (noisy %.2f dB) at epoch %d, %.1f s",
        name,
        result.best_val_psnr,
        result.noisy_val_psnr,
        result.best_epoch,
        result.wall_time_s,
    )
    return summary


def main(params: dict, args) -> None:
    model = getattr(args, "model", None)
    for name in [model] if model else params["denoise"]["models"]:
        run(params, name)
