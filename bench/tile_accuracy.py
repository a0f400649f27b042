"""Validation and test OA of `hybridsn` trained by tiles of a given size, or by patches.

The paper's protocol on the real Indian Pines (tensorly package): 30 PCA components fitted on
all pixels, 30 % stratified random split (10 % of it kept for validation), 25×25 patches;
the checkpoint of the best validation OA is scored on the test pixels with the dense scene pass.
One line per run, so sizes, paths and seeds can be compared in one table:

    python bench/tile_accuracy.py --tile-pixels 256 512 1024 --epochs 30
    python bench/tile_accuracy.py --seeds 0 1 2 --epochs 100           # the default path
    python bench/tile_accuracy.py --batching patches --seeds 0 1 2 --epochs 100
    python bench/tile_accuracy.py --batching patches --seeds 0 1 2 --early-stopping 10

Early stopping keeps the checkpoint a full run keeps whenever validation OA reached 100% before
the stop: a later epoch must be strictly better to replace it.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile

import numpy as np
import torch

from pipeline.data.fetching import fetch_dataset, load_raw
from pipeline.data.pca import fit_pca
from pipeline.data.prepared import Prepared
from pipeline.data.splits import make_split
from pipeline.evaluation.inference import predict_scene
from pipeline.evaluation.metrics import classification_metrics, confusion_matrix
from pipeline.models import build_model
from pipeline.params import defaults
from pipeline.training.classifier import train_classifier
from pipeline.training.common import device_name, resolve_device

P = 25


def load(seed: int):
    with tempfile.TemporaryDirectory() as tmp:
        fetch_dataset("indian_pines", tmp, progress=False)
        cube, gt, _ = load_raw(tmp)
    labels = gt.astype(np.int64)
    split = make_split(labels, "random", seed=seed, train_fraction=0.3, val_fraction=0.1)
    reduced = fit_pca(cube.reshape(-1, cube.shape[-1]), 30, scale="global").transform(cube)
    return reduced.astype(np.float32), labels, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="hybridsn")
    ap.add_argument("--batching", default="tiles", choices=["tiles", "patches"])
    ap.add_argument("--tile-pixels", type=int, nargs="+", default=[defaults().train.tile_pixels])
    ap.add_argument("--tile-size", type=int, nargs="+", default=[0], help="0 = derived")
    ap.add_argument("--curve", action="store_true", help="print validation OA every epoch")
    ap.add_argument("--no-amp", action="store_true", help="fp32 training (no bf16 autocast)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                    help="stop after PATIENCE epochs without a better validation OA; once it is "
                    "100%% the kept checkpoint is the one a full run keeps")  # fmt: skip
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device_name(device)}  threads: {torch.get_num_threads()}  ", end="")
    print(f"date: {datetime.date.today()}  model: {args.model}  epochs: {args.epochs}  ", end="")
    print(f"early stopping: {args.early_stopping or 'off'}")
    print(
        f"{'batching':<10}{'tile px':>8}{'side':>5}{'seed':>5}{'samples/s':>11}{'train s':>9}"
        f"{'best val OA':>13}{'at epoch':>9}{'run':>5}{'test OA':>9}{'AA':>8}{'kappa':>8}",
        flush=True,
    )
    sizes = args.tile_pixels if args.batching == "tiles" else [0]
    sides = args.tile_size if args.batching == "tiles" else [0]
    for seed in args.seeds:
        cube, labels, split = load(seed)
        for tile_pixels, tile_size in ((p, s) for p in sizes for s in sides):
            torch.manual_seed(seed)
            model = build_model(args.model, cube.shape[-1], P, int(labels.max()), dropout=0.4)
            cfg = (
                defaults()
                .override(
                    {
                        "train.epochs": args.epochs,
                        "train.batching": args.batching,
                        "train.tile_pixels": tile_pixels or defaults().train.tile_pixels,
                        "train.tile_size": tile_size or None,
                        "train.early_stopping": args.early_stopping,
                    }
                )
                .train
            )
            curve = (
                (lambda r: print(f"  epoch {r['epoch']}: val OA {r['val_oa']:.4f}", flush=True))
                if args.curve
                else None
            )
            data = Prepared(cube, labels, {"train": split.train, "val": split.val}, {}, {})
            result = train_classifier(
                model, data, cfg, seed=seed, patch_size=P, device=device,
                amp=not args.no_amp, progress=False, on_epoch=curve,
            )  # fmt: skip
            pred = predict_scene(model, cube, P, device=device).labels
            n_classes = int(labels.max())
            cm = confusion_matrix(labels[split.test] - 1, pred[split.test] - 1, n_classes)
            m = classification_metrics(cm)
            print(
                f"{args.batching:<10}{tile_pixels or '-':>8}{tile_size or '-':>5}{seed:>5}"
                f"{result.samples_per_s:>11.1f}{result.wall_time_s:>9.0f}"
                f"{100 * result.best_score:>13.2f}{result.best_epoch:>9}{len(result.history):>5}"
                f"{100 * m['oa']:>9.2f}{100 * m['aa']:>8.2f}{100 * m['kappa']:>8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
