"""Time gather_patches against a naive one-patch-at-a-time loop (as in createImageCubes).

Synthetic cube (default 145 x 145 x 30 float32, Indian Pines after PCA), random labelled-pixel
coordinates, 25 x 25 patches. Prints samples/s of each method and the speed-up over the naive
loop on the same library and device. CUDA rows appear when a GPU is available.

    python bench/patch_gather.py --n 3000 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from pipeline.data.patches import gather_patches, iter_patch_batches, pad_cube


def naive_numpy(padded: np.ndarray, rows, cols, p: int) -> np.ndarray:
    out = np.empty((len(rows), 1, padded.shape[0], p, p), dtype=padded.dtype)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        out[i, 0] = padded[:, r : r + p, c : c + p]
    return out


def naive_torch(padded: torch.Tensor, rows, cols, p: int) -> torch.Tensor:
    out = torch.empty((len(rows), 1, padded.shape[0], p, p), dtype=padded.dtype)
    out = out.to(padded.device)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        out[i, 0] = padded[:, r : r + p, c : c + p]
    return out


def batched(padded, rows, cols, p: int, batch: int) -> int:
    return sum(len(patches) for _, patches in iter_patch_batches(padded, rows, cols, p, batch))


def to_numpy(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=145, help="scene height and width")
    ap.add_argument("--bands", type=int, default=30, help="K, components per pixel")
    ap.add_argument("--patch", type=int, default=25, help="patch size P (odd)")
    ap.add_argument("--n", type=int, default=3000, help="number of patch centres")
    ap.add_argument("--batch", type=int, default=256, help="batch size of the batched row")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cuda", action="store_true", help="skip CUDA even if available")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    cube = rng.standard_normal((args.size, args.size, args.bands)).astype(np.float32)
    rows = rng.integers(0, args.size, args.n)
    cols = rng.integers(0, args.size, args.n)
    p = args.patch

    def nosync() -> None:
        return None

    cases = []
    padded = pad_cube(cube, p)
    cases.append(("numpy", "cpu", padded, rows, cols, naive_numpy, nosync))
    padded_t = pad_cube(torch.from_numpy(cube), p)
    rows_t, cols_t = torch.from_numpy(rows), torch.from_numpy(cols)
    cases.append(("torch", "cpu", padded_t, rows_t, cols_t, naive_torch, nosync))
    if torch.cuda.is_available() and not args.no_cuda:
        dev = torch.device("cuda")
        cases.append(
            (
                "torch",
                torch.cuda.get_device_name(dev),
                pad_cube(torch.from_numpy(cube).to(dev), p),
                rows_t.to(dev),
                cols_t.to(dev),
                naive_torch,
                torch.cuda.synchronize,
            )
        )

    print(
        f"cube {args.size}x{args.size}x{args.bands} float32, P={p}, N={args.n}, "
        f"best of {args.repeats}"
    )
    header = f"{'library':<7} {'device':<24} {'method':<22} {'samples/s':>12} {'vs naive':>9}"
    print(header)
    print("-" * len(header))
    for lib, device, pad, r, c, naive, sync in cases:
        if not np.array_equal(
            to_numpy(naive(pad, r, c, p)), to_numpy(gather_patches(pad, r, c, p))
        ):
            raise SystemExit(f"gather_patches differs from the naive loop on {lib}/{device}")
        t_naive = best_time(lambda n=naive, a=pad, r=r, c=c: n(a, r, c, p), args.repeats, sync)
        t_gather = best_time(lambda a=pad, r=r, c=c: gather_patches(a, r, c, p), args.repeats, sync)
        t_batch = best_time(
            lambda a=pad, r=r, c=c: batched(a, r, c, p, args.batch), args.repeats, sync
        )
        rows_out = [
            ("naive loop", t_naive),
            ("gather_patches", t_gather),
            (f"iter_patch_batches/{args.batch}", t_batch),
        ]
        for name, t in rows_out:
            rate = args.n / t
            print(f"{lib:<7} {device:<24} {name:<22} {rate:>12,.0f} {t_naive / t:>8.2f}x")


if __name__ == "__main__":
    main()
