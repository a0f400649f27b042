"""Whole-scene map: one dense fully-convolutional pass vs batched per-pixel patches.

Times `--model` (default `hybridsn`; random weights: speed does not depend on them) on an
Indian Pines-sized scene
(145 × 145, 30 components) with both paths of pipeline.evaluation.inference on the same device
(`hybridsn_se`: the shared-trunk pass, its 3-D convs once per scene),
checks that they agree, and measures the peak host memory of the dense path on a Pavia
University-sized scene (610 × 340, 15 components) in a fresh subprocess.

    python bench/scene_inference.py                  # CPU: patch path timed on a subset
    python bench/scene_inference.py --device cuda --patch-pixels 0   # all 21,025 pixels
    python bench/scene_inference.py --model hybridsn_se --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time

import numpy as np
import torch

from pipeline.data.patches import pad_cube
from pipeline.evaluation.inference import predict_scene, scene_logits
from pipeline.models import build_model
from pipeline.training.common import device_name, resolve_device

P = 25


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_best(fn, device, repeats):
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def pavia_peak_memory(device: str, strip_rows: int) -> dict:
    """Run in a fresh interpreter and read its own high-water mark (VmHWM; ru_maxrss would carry
    the parent's peak across fork and exec)."""
    code = f"""
import json, numpy as np, torch

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
from pipeline.models import build_model
from pipeline.evaluation.inference import predict_scene
torch.manual_seed(0)
cube = np.random.default_rng(0).normal(size=(610, 340, 15)).astype(np.float32)
model = build_model("hybridsn", 15, {P}, 9, dropout=0.4)
base = hwm()
with torch.inference_mode():
    pred = predict_scene(model, cube, {P}, device="{device}", strip_rows={strip_rows})
print(json.dumps({{"seconds": pred.seconds, "method": pred.method,
    "peak_rss_gib": hwm(), "before_gib": base}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="hybridsn")
    ap.add_argument(
        "--patch-pixels",
        type=int,
        default=None,
        help="pixels for the patch path (0 = all); default all on CUDA, 1024 on CPU",
    )
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--strip-rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-only", action="store_true", help="only the Pavia-sized memory run")
    args = ap.parse_args()
    device = resolve_device(args.device)
    n_patch = args.patch_pixels
    if n_patch is None:
        n_patch = 0 if device.type == "cuda" else 1024
    if args.memory_only:
        print_memory(device, args.strip_rows)
        return
    torch.manual_seed(0)
    cube = np.random.default_rng(0).normal(size=(145, 145, 30)).astype(np.float32)
    model = build_model(args.model, 30, P, 16, dropout=0.4).to(device).eval()
    print(f"device: {device_name(device)}  date: {datetime.date.today()}")

    dense_s = time_best(
        lambda: predict_scene(model, cube, P, device=device, strip_rows=args.strip_rows),
        device,
        args.repeats,
    )
    padded = pad_cube(torch.as_tensor(cube, device=device), P)
    h, w = cube.shape[:2]
    idx = torch.arange(h * w, device=device)
    if n_patch:
        idx = idx[
            torch.randperm(h * w, generator=torch.Generator().manual_seed(0))[:n_patch].to(device)
        ]
    rows, cols = idx // w, idx % w

    def patch_path():
        from pipeline.data.patches import gather_patches

        with torch.inference_mode():
            out = [
                model(
                    gather_patches(
                        padded, rows[s : s + args.batch_size], cols[s : s + args.batch_size], P
                    )
                ).argmax(1)
                for s in range(0, rows.numel(), args.batch_size)
            ]
        return torch.cat(out)

    patch_s = time_best(patch_path, device, 1 if device.type == "cpu" else args.repeats)
    patch_full_s = patch_s * (h * w) / rows.numel()
    with torch.inference_mode():
        dense_logits, method = scene_logits(model, padded, P, strip_rows=args.strip_rows)
        dense_pred = dense_logits.argmax(0).reshape(-1)[idx]
    agree = bool(torch.equal(dense_pred, patch_path()))
    scaled = (
        "" if rows.numel() == h * w else f" (timed on {rows.numel()} pixels, scaled to {h * w})"
    )
    print(f"Indian Pines-sized map (21,025 pixels, K=30, P=25), {args.model}:")
    print(f"  {method + ' pass':<31}: {1000 * dense_s:10.1f} ms")
    print(f"  batched per-pixel patches      : {1000 * patch_full_s:10.1f} ms{scaled}")
    print(
        f"  speed-up                       : {patch_full_s / dense_s:10.1f}x   same labels: {agree}"
    )
    print_memory(device, args.strip_rows)


def print_memory(device, strip_rows: int) -> None:
    mem = pavia_peak_memory(str(device), strip_rows)
    print(
        f"Pavia University-sized scene (610x340, K=15): dense map in {mem['seconds']:.2f} s, "
        f"peak host memory (VmHWM) {mem['peak_rss_gib']:.2f} GiB "
        f"(before the map {mem['before_gib']:.2f} GiB)"
    )


if __name__ == "__main__":
    main()
