"""Leakage and class coverage of each protocol's split on real Indian Pines (no training).

    .venv/bin/python bench/split_leakage.py [--protocol paper leakfree] [--seeds 0 1 2]

Prints, per protocol and split seed, the pixel counts, the train->test and train->validation
leakage for both definitions (centre: pixel inside a training patch; window: patches share a
pixel) and the classes not scored. The README's "Protocols" figures come from this script.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np

from pipeline.data.splits import split_from_params, split_summary
from pipeline.params import PROTOCOLS, validate


def indian_pines_gt() -> np.ndarray:
    root = Path(importlib.util.find_spec("tensorly").submodule_search_locations[0])
    return np.load(root / "datasets" / "data" / "Indian_pines_gt.npy").astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", nargs="+", default=["paper", "leakfree"], choices=PROTOCOLS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--patch", type=int, default=25)
    args = ap.parse_args()
    gt = indian_pines_gt()
    print(
        "| protocol | seed | train | val | test | guard | excluded | test in a training patch "
        "(centre / window) | val in a training patch (centre / window) | not scored | time (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in args.protocol:
        for seed in args.seeds:
            params = validate({"protocol": name, "split": {"seed": seed}})
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                split = split_from_params(gt, params["split"], args.patch)
            took = time.perf_counter() - t0
            s = split_summary(gt, split, args.patch)
            c, lk = s["counts"], s["leakage"]
            test = " / ".join(
                f"{lk[g]['train_to_test_pixels']} ({100 * lk[g]['train_to_test_share']:.1f}%)"
                for g in ("centre", "window")
            )
            val = " / ".join(
                f"{lk[g]['train_to_val_pixels']} ({100 * lk[g]['train_to_val_share']:.1f}%)"
                for g in ("centre", "window")
            )
            unseen = [
                r["label"]
                for r in s["per_class"]
                if r["test"] and not r["train"]  # scored without training pixels
            ]
            ns = ", ".join(str(r["label"]) for r in s["not_scored"]) or "none"
            print(
                f"| {name} | {seed} | {c['train']} | {c['val']} | {c['test']} | {c['guard']} | "
                f"{c['excluded']} | {test} | {val} | {ns} | {took:.1f} |"
            )
            if unseen:
                print(f"ERROR: classes {unseen} have test pixels but no training pixels")


if __name__ == "__main__":
    main()
