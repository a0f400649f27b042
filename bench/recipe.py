"""Choose the training recipe for the leak-free k-fold protocol on validation folds only.

Each recipe (a set of ``train.*`` changes) trains one model on every fold through the one path
(:func:`pipeline.training.classifier.train_model`), fanned out by the study's engine; the score
is the best validation OA the loop kept (the validation blocks of each fold, never its test
blocks, which are not even scored here). Recipes are compared with the baseline recipe paired
by fold, with the corrected resampled t-test (the folds' training sets overlap). Writes
``recipe.json`` and ``recipe.md`` to ``--out``.

    python bench/recipe.py --out recipe --recipes base flips flips+ls
    python bench/recipe.py --out recipe --engine ray --gpus-per-cell 0.25 --epochs 100

``--studies base=DIR flips=DIR`` instead reads two finished leak-free studies (``hsi study`` run
once per recipe on the same folds, as ``bench/gpu_session.sh`` does): the recipe is chosen on the
cells' validation OA, and only then its effect on test OA is reported, paired by fold, per model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.data.fetching import load_raw
from pipeline.data.prepared import prepare_scene
from pipeline.evaluation.statistics import fold_comparison
from pipeline.models import spec
from pipeline.params import load_params, validate
from pipeline.training.classifier import train_model
from pipeline.training.common import device_name, resolve_device

RECIPES = {
    "base": {},
    "flips": {"train.augment": "flips"},
    "flips+ls": {"train.augment": "flips", "train.label_smoothing": 0.1},
    "flips+wd": {"train.augment": "flips", "train.weight_decay": 1e-4},
    "flips+balanced": {"train.augment": "flips", "train.class_weights": "balanced"},
    "flips+p15": {"train.augment": "flips", "patch.size": 15, "split.block_size": 25},
}
"""Candidate recipes. ``flips+p15`` keeps the 25-pixel blocks, so its folds are those of the
others and the comparison stays paired."""


def _cell(payload: dict, shared: dict, ctx) -> dict:
    params = validate(shared["params"], "recipe").override(RECIPES[payload["recipe"]])
    cube, gt, manifest = shared["raw"]
    data = prepare_scene(cube, gt, manifest, params, fold=payload["fold"])
    device = resolve_device(params.compute.device)
    t0 = time.perf_counter()
    _, result = train_model(
        spec(shared["model"], "classification"), data, params, shared["seed"], device=device,
        progress=False,
    )  # fmt: skip
    return {
        "recipe": payload["recipe"],
        "fold": payload["fold"],
        "val_oa": result.best_score,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_pixels": int(data.train.sum()),
        "val_pixels": int(data.val.sum()),
        "seconds": time.perf_counter() - t0,
        "device": device_name(device),
        "summary": f"val OA {result.best_score}",
    }


def _study_cells(folder: Path) -> dict[str, dict[tuple[int, int], dict]]:
    """model -> (fold, seed) -> {val_oa, oa, train_pixels, test_pixels} of a study's cells."""
    cells: dict[str, dict[tuple[int, int], dict]] = {}
    for train_json in sorted(folder.glob("reports/*/study/leakfree/cells/*/train.json")):
        t = json.loads(train_json.read_text())
        m = json.loads((train_json.parent / "metrics.json").read_text())
        cells.setdefault(t["model"], {})[(t["fold"], t["seed"])] = {
            "val_oa": t.get("best_val_oa"),
            "oa": m["oa"],
            "train_pixels": t.get("train_pixels"),
            "test_pixels": m["n_test"],
        }
    return cells


def compare_studies(studies: dict[str, Path]) -> tuple[dict, str]:
    """Choose among recipes run as whole studies on validation OA, then report test OA."""
    by = {name: _study_cells(folder) for name, folder in studies.items()}
    names = list(by)
    base = names[0]
    models = [m for m in by[base] if all(m in by[n] for n in names) and by[base][m]]
    models = [m for m in models if next(iter(by[base][m].values()))["val_oa"] is not None]
    out: dict = {"recipes": names, "models": {}}
    lines = [
        "| model | recipe | cells | val OA (%) | test OA (%) | ΔOA on test vs "
        f"`{base}` (fold-paired) |",
        "|---|---|---:|---:|---:|---|",
    ]
    val_means = {}
    for m in models:
        out["models"][m] = {}
        for n in names:
            c = by[n][m]
            val, test = [x["val_oa"] for x in c.values()], [x["oa"] for x in c.values()]
            row = {"cells": len(c), "val_oa": float(np.mean(val)), "oa": float(np.mean(test))}
            val_means.setdefault(n, []).extend(val)
            vs = "–"
            if n != base:
                cmp = fold_comparison(
                    {k: x["oa"] for k, x in by[base][m].items()},
                    {k: x["oa"] for k, x in c.items()},
                    model=n, baseline=base,
                    n_train={k[0]: x["train_pixels"] for k, x in c.items()},
                    n_test={k[0]: x["test_pixels"] for k, x in c.items()},
                )  # fmt: skip
                row["against_base"] = cmp
                vs = cmp["verdict_line"]
            out["models"][m][n] = row
            lines.append(
                f"| `{m}` | `{n}` | {row['cells']} | {100 * row['val_oa']:.2f} | "
                f"{100 * row['oa']:.2f} | {vs} |"
            )
    chosen = max(names, key=lambda n: np.mean(val_means.get(n, [-1])))
    out["val_oa_mean"] = {n: float(np.mean(v)) for n, v in val_means.items()}
    out["chosen"] = chosen
    head = [
        "| recipe | CNN cells | mean validation OA (%) |",
        "|---|---:|---:|",
        *(
            f"| `{n}` | {len(val_means.get(n, []))} | {100 * out['val_oa_mean'].get(n, np.nan):.2f} |"
            for n in names
        ),  # fmt: skip
        "",
        f"Chosen on the mean validation OA of all CNN cells each recipe finished: `{chosen}`. "
        "Its effect on test OA, per model, paired by fold (corrected resampled t-test):",
        "",
    ]
    return out, "\n".join(head + lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--studies", nargs="+", metavar="NAME=DIR", default=None,
                    help="compare finished studies, one per recipe, instead of training")  # fmt: skip
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw/indian_pines", help="a fetched scene folder")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--model", default="hybridsn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--early-stopping", type=int, default=20)
    ap.add_argument("--engine", default="serial", choices=distributed.ENGINES)
    ap.add_argument("--address", default=None)
    ap.add_argument("--cpus-per-cell", type=float, default=1)
    ap.add_argument("--gpus-per-cell", type=float, default=None)
    args = ap.parse_args()
    if args.studies:
        studies = {kv.split("=", 1)[0]: Path(kv.split("=", 1)[1]) for kv in args.studies}
        out, md = compare_studies(studies)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "recipe.json").write_text(json.dumps(out, indent=2) + "\n")
        (args.out / "recipe.md").write_text(md)
        print(md)
        return

    common = {"train.epochs": args.epochs, "train.early_stopping": args.early_stopping}
    params = load_params(args.params).with_protocol("leakfree").override(common)
    folds = args.folds if args.folds is not None else list(range(params.split.folds))
    shared = {
        "params": params.to_dict(),
        "raw": load_raw(Path(args.raw), params.dataset.crop),
        "model": args.model,
        "seed": args.seed,
    }
    cells = [(f"{r}-fold{k}", {"recipe": r, "fold": k}) for r in args.recipes for k in folds]
    t0 = time.perf_counter()
    results = distributed.run_cells(
        _cell, cells, engine=args.engine, address=args.address, cpus_per_cell=args.cpus_per_cell,
        gpus_per_cell=args.gpus_per_cell, shared=shared,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    by = {r: {(res["fold"], args.seed): res for res in results.values() if res["recipe"] == r}
          for r in args.recipes}  # fmt: skip
    n_train = {res["fold"]: res["train_pixels"] for res in results.values()}
    n_val = {res["fold"]: res["val_pixels"] for res in results.values()}
    base = args.recipes[0]
    rows = []
    for r in args.recipes:
        oas = [c["val_oa"] for c in by[r].values()]
        row = {
            "recipe": r,
            "changes": RECIPES[r],
            "val_oa_mean": float(np.mean(oas)),
            "val_oa_std": float(np.std(oas, ddof=1)) if len(oas) > 1 else 0.0,
            "per_fold": {str(k): c["val_oa"] for (k, _), c in sorted(by[r].items())},
            "epochs_run": float(np.mean([c["epochs_run"] for c in by[r].values()])),
            "seconds": float(np.mean([c["seconds"] for c in by[r].values()])),
        }
        if r != base and len(folds) > 1:
            row["against_base"] = fold_comparison(
                {k: c["val_oa"] for k, c in by[base].items()},
                {k: c["val_oa"] for k, c in by[r].items()},
                model=r, baseline=base, n_train=n_train, n_test=n_val,
            )  # fmt: skip
        rows.append(row)
    best = max(rows, key=lambda row: row["val_oa_mean"])
    device = next(iter(results.values()))["device"]
    out = {
        "model": args.model,
        "seed": args.seed,
        "folds": folds,
        "epochs": args.epochs,
        "early_stopping": args.early_stopping,
        "score": "best validation OA (validation blocks of each fold; test blocks never scored)",
        "device": device,
        "wall_s": wall,
        "date": datetime.date.today().isoformat(),
        "recipes": rows,
        "chosen": best["recipe"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# Recipe for `{args.model}` under `leakfree` k-fold, chosen on validation OA",
        "",
        f"{len(folds)} folds, seed {args.seed}, at most {args.epochs} epochs, early stopping "
        f"after {args.early_stopping}; {device}, {out['date']}, {wall:.0f} s in all.",
        "",
        "| recipe | changes | val OA (%) mean ± std | per fold | epochs | s/cell | vs base |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        vs = row.get("against_base", {}).get("verdict_line", "–")
        folds_txt = " ".join(f"{100 * v:.1f}" for v in row["per_fold"].values())
        lines.append(
            f"| `{row['recipe']}` | {row['changes'] or '–'} | {100 * row['val_oa_mean']:.2f} ± "
            f"{100 * row['val_oa_std']:.2f} | {folds_txt} | {row['epochs_run']:.0f} | "
            f"{row['seconds']:.0f} | {vs} |"
        )
    lines += ["", f"Chosen (highest mean validation OA): `{best['recipe']}`.", ""]
    (args.out / "recipe.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
