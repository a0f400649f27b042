"""DnCNN denoising throughput, in megapixels per second of band-pixels (H·W·B / time).

A synthetic cube of Indian Pines size (145×145×200, values in [0, 1]) is denoised band by band
with :func:`pipeline.evaluation.denoise.denoise_cube`, as `denoise_evaluate` and `robustness` do,
on the CPU and, when present, on CUDA (fp32 and bf16 autocast). Weights are random: the time
does not depend on them. Prints a small table with the device name and the date.

    .venv/bin/python bench/denoise_throughput.py                # full cube on every device
    .venv/bin/python bench/denoise_throughput.py --cpu-bands 10 # a quicker CPU estimate
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import torch

from pipeline.evaluation.denoise import denoise_cube
from pipeline.models.dncnn import DnCNN
from pipeline.training.common import device_name

SHAPE = (145, 145, 200)


def measure(model, cube, device: torch.device, amp: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds to denoise ``cube`` (one warm-up pass first)."""
    denoise_cube(model, cube[..., : min(4, cube.shape[-1])], device=device, amp=amp)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        denoise_cube(model, cube, device=device, amp=amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=17)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--cpu-bands", type=int, default=SHAPE[2], help="bands timed on the CPU")
    p.add_argument("--repeats", type=int, default=3, help="CUDA repeats (best kept)")
    p.add_argument("--cpu-repeats", type=int, default=1)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = DnCNN(depth=args.depth, channels=args.channels).eval()
    cube = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    runs = [("cpu", torch.device("cpu"), False, args.cpu_bands, args.cpu_repeats)]
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        runs += [
            ("cuda fp32", cuda, False, SHAPE[2], args.repeats),
            ("cuda bf16", cuda, True, SHAPE[2], args.repeats),
        ]

    print(
        f"DnCNN depth {args.depth}, {args.channels} channels; cube {SHAPE[0]}×{SHAPE[1]}×"
        f"{SHAPE[2]}; torch {torch.__version__}; {platform.node()}; "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    header = f"{'run':<10} {'device':<32} {'bands':>5} {'seconds':>9} {'Mpx/s':>9}"
    print(header)
    print("-" * len(header))
    for label, device, amp, bands, repeats in runs:
        sub = np.ascontiguousarray(cube[..., :bands])
        seconds = measure(model, sub, device, amp, repeats)
        mpx = sub.size / seconds / 1e6
        name = device_name(device)
        if device.type == "cpu":
            name = f"cpu ({torch.get_num_threads()} threads)"
        print(f"{label:<10} {name:<32} {bands:>5} {seconds:>9.3f} {mpx:>9.2f}")


if __name__ == "__main__":
    main()
