"""Training throughput of our trainer vs the tutorial-style reference, same device, same run.

Ours (pipeline.training.classifier.train_classifier), two paths: `patches` (the padded cube,
coordinates and labels on the device, batches of 256 patches gathered there) and `tiles` (one
shared-trunk pass per tile of the scene, the head per training pixel; see the classifier's
docstring); bf16 autocast on CUDA and on CPUs with native bf16 (`train.amp`). The `auto` path,
the pipeline's default, is the tile path for every HybridSN variant.
Reference (written here the way the common HybridSN tutorial code does it): every training patch
materialised as one numpy array first, a DataLoader over it, fp32, batch 128.
All train `--model` (default `hybridsn`) on the real Indian Pines scene (tensorly package)
reduced to 30 PCA components, 30 % stratified random split, for about the same number of samples.

    python bench/train_throughput.py --device cpu --samples 3000     # CPU: a few minutes
    python bench/train_throughput.py --epochs 100 --device cuda      # the 100-epoch target
    python bench/train_throughput.py --model hybridsn_se --samples 1000  # a variant
"""

from __future__ import annotations

import argparse
import datetime
import resource
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.fetching import fetch_dataset, load_raw
from pipeline.data.pca import fit_pca
from pipeline.data.prepared import Prepared
from pipeline.data.splits import make_split
from pipeline.models import build_model
from pipeline.params import defaults
from pipeline.training.classifier import train_classifier
from pipeline.training.common import device_name, resolve_device

P = 25


def load_indian_pines():
    with tempfile.TemporaryDirectory() as tmp:
        fetch_dataset("indian_pines", tmp, progress=False)
        cube, gt, _ = load_raw(tmp)
    split = make_split(gt.astype(np.int64), "random", seed=0, train_fraction=0.3, val_fraction=0)
    pixels = cube.reshape(-1, cube.shape[-1])
    reduced = fit_pca(pixels, 30, scale="global").transform(cube)
    return reduced, gt.astype(np.int64), split.train


def create_image_cubes(cube, labels, mask):
    """The tutorial's createImageCubes, restricted to training pixels: every patch materialised."""
    r = P // 2
    padded = np.pad(cube, ((r, r), (r, r), (0, 0)))
    rows, cols = np.nonzero(mask)
    patches = np.zeros((len(rows), P, P, cube.shape[-1]), dtype=np.float32)
    for i, (y, x) in enumerate(zip(rows, cols, strict=True)):
        patches[i] = padded[y : y + P, x : x + P]
    x = patches.transpose(0, 3, 1, 2)[:, None]  # (N, 1, K, P, P)
    return np.ascontiguousarray(x), labels[rows, cols] - 1


def reference(name, cube, labels, mask, device, samples, batch=128):
    t0 = time.perf_counter()
    x, y = create_image_cubes(cube, labels, mask)
    prep = time.perf_counter() - t0
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch, shuffle=True
    )
    torch.manual_seed(0)
    model = build_model(name, cube.shape[-1], P, int(labels.max()), dropout=0.4).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = 0
    sync(device)
    t0 = time.perf_counter()
    while seen < samples:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(yb)
            if seen >= samples:
                break
    sync(device)
    return seen / (time.perf_counter() - t0), prep, x.nbytes


def ours(name, cube, labels, mask, device, epochs, batching, tile_pixels, batch=256):
    model = build_model(name, cube.shape[-1], P, int(labels.max()), dropout=0.4)
    cfg = (
        defaults()
        .override(
            {
                "train.epochs": epochs,
                "train.batch_size": batch,
                "train.batching": batching,
                "train.tile_pixels": tile_pixels,
            }
        )
        .train
    )
    data = Prepared(cube, labels, {"train": mask, "val": np.zeros_like(mask)}, {}, {})
    result = train_classifier(
        model, data, cfg, seed=0, patch_size=P, device=device, amp=True, progress=False
    )
    return result.samples_per_s, result.wall_time_s, result.history[-1]["train_oa"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="hybridsn")
    ap.add_argument("--samples", type=int, default=3000, help="training samples per method")
    ap.add_argument("--epochs", type=int, default=None, help="ours: full epochs (overrides)")
    ap.add_argument(
        "--tile-pixels",
        type=int,
        default=defaults().train.tile_pixels,
        help="tile path's step size",
    )
    ap.add_argument("--skip-patches", action="store_true", help="time only tiles and reference")
    ap.add_argument(
        "--skip-reference", action="store_true", help="time only our two paths (tiles/patches)"
    )
    args = ap.parse_args()
    device = resolve_device(args.device)
    cube, labels, mask = load_indian_pines()
    n = int(mask.sum())
    epochs = args.epochs or max(1, round(args.samples / n))
    print(
        f"device: {device_name(device)}  threads: {torch.get_num_threads()}  "
        f"date: {datetime.date.today()}  model: {args.model}  train pixels: {n}  "
        f"tile pixels: {args.tile_pixels}"
    )
    rows = []
    paths = ["tiles"] if args.skip_patches else ["patches", "tiles"]
    for batching in paths:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sps, wall, acc = ours(
            args.model, cube, labels, mask, device, epochs, batching, args.tile_pixels
        )
        rows.append((f"ours, {batching} (bf16 where native)", sps, peak(device), wall, acc))
    if args.skip_reference:
        for name, sps, mem, wall, _ in rows:
            print(f"{name:<44}{sps:>12.1f}{mem:>30}  {epochs} epoch(s) in {wall:.1f} s")
        if not args.skip_patches:
            print(f"ratio tiles/patches: {rows[1][1] / rows[0][1]:.2f}x")
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ref_sps, ref_prep, ref_bytes = reference(args.model, cube, labels, mask, device, n * epochs)
    rows.append(("reference (materialised, DataLoader, fp32)", ref_sps, peak(device), None, None))
    print(f"{'method':<44}{'samples/s':>12}{'x reference':>13}{'peak memory':>30}")
    for name, sps, mem, _, _ in rows:
        print(f"{name:<44}{sps:>12.1f}{sps / ref_sps:>12.2f}x{mem:>30}")
    for name, _, _, wall, acc in rows[:-1]:
        print(f"{name}: {epochs} epoch(s) in {wall:.1f} s (last-epoch train acc {acc:.3f})")
    print(f"reference: patch array {ref_bytes / 2**20:.0f} MiB built in {ref_prep:.2f} s")
    print("(CPU peak memory is the process's maximum RSS so far, so it only grows down the table)")
    default = next(sps for name, sps, *_ in rows if "tiles" in name)
    if not args.skip_patches:
        print(f"ratio tiles/patches: {default / rows[0][1]:.2f}x")
    print(f"ratio ours/reference: {default / ref_sps:.2f}x")


if __name__ == "__main__":
    main()
