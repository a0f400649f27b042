"""Stage `denoise_train`: fit the DnCNN band denoiser on the training rows of the raw scene."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.data.fetching import load_raw
from pipeline.errors import DataError
from pipeline.io import write_json, write_text
from pipeline.models import count_parameters
from pipeline.models.dncnn import DnCNN
from pipeline.params import flatten
from pipeline.stages.train import history_csv
from pipeline.tracking import start_run
from pipeline.training.common import device_name, resolve_device, seed_everything
from pipeline.training.denoiser import (
    DenoiseConfig,
    band_range,
    config_dict,
    row_split,
    save_denoiser,
    scale_bands,
    train_denoiser,
)

log = logging.getLogger(__name__)

RUN_NAME = "dncnn"


def dncnn_path(params: dict) -> Path:
    return Path("models") / params["dataset"]["name"] / "dncnn.pt"


def denoise_dir(params: dict) -> Path:
    return Path("reports") / params["dataset"]["name"] / "denoise"


def raw_scene(params: dict) -> tuple[np.ndarray, dict]:
    """The raw (H, W, B) cube as float32, cropped by ``dataset.crop`` as `prepare` does."""
    cube, _, manifest = load_raw(Path("data/raw") / params["dataset"]["name"])
    crop = params["dataset"]["crop"]
    if crop:
        r0, r1, c0, c1 = crop
        cube = cube[r0:r1, c0:c1]
        if cube.shape[0] == 0 or cube.shape[1] == 0:
            raise DataError(f"'dataset.crop' = {crop} leaves nothing of the scene")
    return np.asarray(cube, dtype=np.float32), manifest


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
        seed=dp["seed"],
        amp=params["train"]["amp"],
    )


def run(params: dict) -> dict:
    dp = params["denoise"]
    cube, manifest = raw_scene(params)
    device = resolve_device(params["train"]["device"])
    lo, hi = band_range(cube)
    split = row_split(cube.shape[0], dp["test_fraction"])
    clean = scale_bands(cube[split.train], lo, hi)
    cfg = denoise_config(params)
    seed_everything(cfg.seed, deterministic=device.type == "cpu")
    model = DnCNN(depth=dp["depth"], channels=dp["channels"])
    n_params = count_parameters(model)
    out = denoise_dir(params)
    ckpt_path = dncnn_path(params)
    dataset = manifest["dataset"]
    tags = {
        "dvc_stage": "denoise_train",
        "stage": "denoise_train",
        "model": RUN_NAME,
        "dataset": dataset,
        "dataset_sha256": manifest["cube"]["sha256"],
        "device": device_name(device),
    }
    with start_run(params, dataset, RUN_NAME, tags, task="denoising") as mlrun:
        logged = {
            k: v
            for k, v in flatten(params).items()
            if k.startswith(("denoise.", "dataset.")) or k in ("train.device", "train.amp")
        }
        mlrun.log_params({**logged, "model": RUN_NAME, "n_params": n_params})
        mlrun.log_dataset(
            name=dataset,
            source=str(manifest["cube"].get("source", Path("data/raw") / dataset)),
            sha256=manifest["cube"]["sha256"],
            shape=cube.shape,
            protocol=f"rows 0-{split.train_stop - 1} train, {split.test_start}- test",
            counts={"train_rows": split.train_stop, "test_rows": cube.shape[0] - split.test_start},
        )
        log.info(
            "training DnCNN (%d parameters) on rows %d-%d of %s, %s",
            n_params,
            0,
            split.train_stop - 1,
            dataset,
            device_name(device),
        )
        result = train_denoiser(
            model,
            clean,
            cfg,
            device=device,
            on_epoch=lambda row: mlrun.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
            ),
        )
        summary = {
            "model": RUN_NAME,
            "dataset": dataset,
            "n_params": n_params,
            "device": device_name(device),
            "config": {**model.config, **config_dict(cfg)},
            "patch_size_used": result.patch_size,
            "split": split.to_dict(),
            "epochs_run": len(result.history),
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
            state_dict=result.state_dict,
            model_config=model.config,
            band_min=lo,
            band_max=hi,
            noise=cfg.noise(),
            split=split,
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
        )
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
            mlrun.log_artifact(path)
        mlrun.log_model(ckpt_path, RUN_NAME, kind="dncnn")
    log.info(
        "DnCNN: validation PSNR %.2f dB (noisy %.2f dB) at epoch %d, %.1f s",
        result.best_val_psnr,
        result.noisy_val_psnr,
        result.best_epoch,
        result.wall_time_s,
    )
    return summary


def main(params: dict, args) -> None:
    run(params)
