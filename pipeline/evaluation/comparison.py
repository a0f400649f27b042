"""Comparing trained models over seeds and folds: the statistics behind `report` and `study`.

A *cell* is one trained and evaluated model (model, seed, fold). Each (model, seed) run is
pooled over its folds: every fold's predictions on its own test pixels together cover every
labelled pixel once (k-fold), so OA, AA, kappa and per-class accuracy are scored on the pooled
predictions. A variant is compared with each baseline paired by (fold, seed): over folds with
the corrected resampled t-test (their training sets overlap), on one split with the paired
t-test across seeds (:func:`pipeline.evaluation.statistics.fold_comparison`). McNemar per seed
on the pooled pixels and a spatial block-bootstrap CI per run are reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.evaluation.metrics import mcnemar, mean_std
from pipeline.evaluation.statistics import (
    ALPHA,
    block_bootstrap,
    fold_comparison,
    holm,
    pooled_metrics,
)
from pipeline.naming import run_name


@dataclass
class Cell:
    model: str
    seed: int
    fold: int
    pred: np.ndarray  # (H, W) predicted classes 1..C
    test: np.ndarray  # (H, W) test pixels of this cell's fold
    metrics: dict  # oa, aa, kappa, n_test, scene_inference_s
    train: dict = field(default_factory=dict)  # n_params, train_time_s, epochs_run, ...
    region: np.ndarray | None = None  # k-fold: the pixels of the fold's blocks (for maps)


def pool(cells: Sequence[Cell]) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(model, seed) → (pooled prediction map, pooled test mask) over the run's folds."""
    out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for c in sorted(cells, key=lambda c: (c.model, c.seed, c.fold)):
        pred, test = out.get((c.model, c.seed), (np.zeros_like(c.pred), np.zeros_like(c.test)))
        if (test & c.test).any():
            raise ValueError(f"{run_name(c.model, c.seed)}: folds overlap in their test pixels")
        pred = np.where(c.test, c.pred, pred)
        out[(c.model, c.seed)] = (pred, test | c.test)
    return out


def bootstrap_runs(pooled, labels: np.ndarray, n_classes: int, block: int) -> dict[str, dict]:
    """Spatial block-bootstrap 95 % CI of OA and kappa of every pooled run, by run name."""
    out = {}
    for (m, s), (pred, test) in sorted(pooled.items()):
        rows, cols = np.nonzero(test)
        y_true, y_pred = labels[rows, cols] - 1, pred[rows, cols] - 1
        out[run_name(m, s)] = block_bootstrap(y_true, y_pred, rows, cols, n_classes, block, seed=s)
    return out


def _mcnemar(pooled, labels, model: str, baseline: str) -> list[dict]:
    rows = []
    for (m, s), (pred, test) in sorted(pooled.items()):
        if m != model or (baseline, s) not in pooled:
            continue
        base, base_test = pooled[(baseline, s)]
        both = test & base_test
        gt = labels[both]
        res = mcnemar(base[both] == gt, pred[both] == gt)
        res["seed"] = s
        res["oa_difference"] = float((pred[both] == gt).mean() - (base[both] == gt).mean())
        rows.append(res)
    return rows


def compare(cells: Sequence[Cell], labels: np.ndarray, baseline: str) -> dict[str, dict]:
    """Every other model against ``baseline``: the paired verdict on OA and McNemar per seed
    (Holm-corrected across the variants of each seed; assumes independent pixels)."""
    scores: dict[str, dict] = {}
    n_train: dict[int, float] = {}
    n_test: dict[int, float] = {}
    for c in cells:
        scores.setdefault(c.model, {})[(c.fold, c.seed)] = c.metrics["oa"]
        n_train[c.fold] = float(c.train.get("train_pixels") or 1)
        n_test[c.fold] = float(c.metrics.get("n_test") or c.test.sum())
    pooled = pool(cells)
    out: dict[str, dict] = {}
    for m in sorted(set(scores) - {baseline}):
        if baseline not in scores or not set(scores[m]) & set(scores[baseline]):
            continue
        res = fold_comparison(
            scores[baseline],
            scores[m],
            model=m,
            baseline=baseline,
            n_train=n_train,
            n_test=n_test,
        )
        res["mcnemar"] = _mcnemar(pooled, labels, m, baseline)
        out[m] = res
    seeds = sorted({r["seed"] for t in out.values() for r in t["mcnemar"]})
    for s in seeds:
        entries = [r for t in out.values() for r in t["mcnemar"] if r["seed"] == s]
        for r, adj in zip(entries, holm([r["p_value"] for r in entries]), strict=True):
            r["p_holm"] = adj
    return out


def _model_row(cells: list[Cell], labels, names) -> dict:
    seeds = sorted({c.seed for c in cells})
    runs = {}
    for s in seeds:
        folds = {c.fold: (labels[c.test] - 1, c.pred[c.test] - 1) for c in cells if c.seed == s}
        runs[run_name(cells[0].model, s)] = pooled_metrics(folds, len(names), class_names=names)
    pooled_scores = {k: [r[k] for r in runs.values()] for k in ("oa", "aa", "kappa")}
    per_class = []
    for i in range(len(names)):
        vals = [r["class_accuracy"][i] for r in runs.values()]
        vals = [v for v in vals if v is not None]
        per_class.append(float(np.mean(vals)) if vals else None)
    train = [c.train for c in cells]
    row = {
        "n_params": train[0].get("n_params"),
        **{k: mean_std(v) for k, v in pooled_scores.items()},
        "fold_oa": mean_std([c.metrics["oa"] for c in cells]),
        "class_accuracy": per_class,
        "train_time_s": mean_std([t.get("train_time_s", 0.0) for t in train]),
        "epochs_run": mean_std([t.get("epochs_run", 0) for t in train]),
        "best_epoch": mean_std([t.get("best_epoch", 0) for t in train]),
        "batching": sorted({str(t.get("batching")) for t in train}),
        "scene_inference_s": mean_std([c.metrics.get("scene_inference_s", 0.0) for c in cells]),
        "runs": {
            name: {k: r[k] for k in ("oa", "aa", "kappa", "n")} | {"per_fold": r["per_fold"]}
            for name, r in runs.items()
        },
        "cells": {
            run_name(c.model, c.seed, c.fold): {**c.metrics, **c.train}
            for c in sorted(cells, key=lambda c: (c.seed, c.fold))
        },
    }
    return row


def summarize(
    cells: Sequence[Cell],
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    baselines: Sequence[str],
    block: int,
    info: dict,
) -> dict:
    """The comparison of every model in ``cells`` (JSON-ready); ``info`` (dataset, protocol,
    split, pca, training) is carried into the summary for the markdown."""
    if not cells:
        raise ValueError("nothing to compare: no evaluated model")
    pooled = pool(cells)
    models = list(dict.fromkeys(c.model for c in cells))
    rows = {
        m: _model_row([c for c in cells if c.model == m], labels, list(class_names)) for m in models
    }
    present = [b for b in baselines if b in models]
    return {
        **info,
        "class_names": list(class_names),
        "seeds": sorted({c.seed for c in cells}),
        "folds": sorted({c.fold for c in cells}),
        "baselines": present,
        "baseline": present[0] if present else None,
        "alpha": ALPHA,
        "models": rows,
        "bootstrap": bootstrap_runs(pooled, labels, len(class_names), block),
        "comparisons": {b: compare(cells, labels, b) for b in present},
    }


def _pm(stat: dict, scale: float = 100.0, digits: int = 2) -> str:
    """mean ± sample std; a single value (one seed) has no spread to show."""
    if stat.get("n", 2) < 2:
        return f"{scale * stat['mean']:.{digits}f}"
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def _ci(b: dict) -> str:
    return f"{100 * b['estimate']:.2f} [{100 * b['low']:.2f}, {100 * b['high']:.2f}]"


def _split_line(s: dict) -> list[str]:
    sp = s["split"]
    leak = sp.get("leakage") or {}
    if sp.get("mode") == "kfold":
        how = (
            f"Split `kfold`: {sp['folds']} folds of {sp['block_size']}×{sp['block_size']}-pixel "
            f"blocks (seed {sp.get('seed', 0)}); every input is masked to its own set "
            f"(test windows see `{sp.get('context', 'own')}`). "
        )
    else:
        guard = f", `{sp['guard']}` guard" if sp.get("mode") == "disjoint" else ""
        how = f"Split `{sp.get('mode')}`{guard} (seed {sp.get('seed', 0)}). "
    how += f"{sp.get('train_pool', '?')} training-pool and {sp.get('test', '?')} test pixels"
    how += " per fold on average" if sp.get("mode") == "kfold" else ""
    if leak:
        how += (
            f"; train→test leakage {100 * leak['centre']['train_to_test_share']:.2f}% (centre: "
            f"a test pixel visible in a training window) / "
            f"{100 * leak['window']['train_to_test_share']:.2f}% (window: a test window shows a "
            "pixel a training window sees)"
        )
    pca = s.get("pca", {})
    how += (
        f". PCA: {pca.get('components') or 'dataset default'} components fitted on "
        f"`{pca.get('fit_on')}` pixels, whiten={pca.get('whiten')}."
    )
    lines = [how]
    if sp.get("not_scored_note"):
        note = sp["not_scored_note"]
        lines.append(f"**{note[0].upper()}{note[1:]}.**")
    return lines


def summary_markdown(s: dict) -> str:
    tr = s["training"]
    many_folds = len(s["folds"]) > 1
    lines = [
        f"# {s['dataset']}, protocol `{s['protocol']}`: models compared",
        "",
        f"Protocol `{s['protocol']}`. " + _split_line(s)[0],
        *_split_line(s)[1:],
        f"Training: at most {tr['epochs']} epochs, "
        + (
            f"early stopping after {tr['early_stopping']} epochs without a better validation OA"
            if tr["early_stopping"]
            else "no early stopping"
        )
        + f", batching `{tr['batching']}`, augment `{tr.get('augment', 'none')}`; the checkpoint "
        "of the best validation OA is scored (classical baselines: C/γ by inner spatial CV).",
        f"Seeds: {', '.join(map(str, s['seeds']))}"
        + (f"; folds: {', '.join(map(str, s['folds']))}" if many_folds else "")
        + (
            " (mean ± sample std over seeds of the scores pooled over folds)."
            if len(s["seeds"]) > 1
            else " (one seed: OA, AA and kappa of the predictions pooled over folds)."
        ),
        "",
        "| model | parameters | OA (%) | AA (%) | kappa (%) | fold OA (%) | epochs run "
        "| best epoch | train time (s) | scene map (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in s["models"].items():
        params = f"{r['n_params']:,}" if isinstance(r["n_params"], int) else "–"
        lines.append(
            f"| `{m}` | {params} | {_pm(r['oa'])} | {_pm(r['aa'])} | {_pm(r['kappa'])} | "
            f"{_pm(r['fold_oa'])} | {_pm(r['epochs_run'], 1, 1)} | {_pm(r['best_epoch'], 1, 1)} "
            f"| {_pm(r['train_time_s'], 1, 1)} | {_pm(r['scene_inference_s'], 1, 3)} |"
        )
    for b, comps in s["comparisons"].items():
        how = (
            "corrected resampled t-test over folds" if many_folds else "paired t-test across seeds"
        )
        lines += ["", f"## Verdicts against `{b}` ({how} on OA, α = {s['alpha']})", ""]
        lines += [f"- {t['verdict_line']}." for t in comps.values()]
        lines += [
            "",
            "| model | pairs | ΔOA mean ± std (pp) | t | p | verdict |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for m, t in comps.items():
            pt = t["test"]
            tv = "–" if pt["t"] is None else f"{pt['t']:.2f}"
            pv = "–" if pt["p_value"] is None else f"{pt['p_value']:.3g}"
            d = t["oa_difference"]
            lines.append(
                f"| `{m}` | {len(t['cells'])} | {100 * d['mean']:+.2f} ± {100 * d['std']:.2f} | "
                f"{tv} | {pv} | {t['verdict']} |"
            )
    names = s["class_names"]
    lines += [
        "",
        "## Per-class accuracy (%) over the pooled test pixels (mean over seeds)",
        "",
        "| class | " + " | ".join(f"`{m}`" for m in s["models"]) + " |",
        "|---|" + "---:|" * len(s["models"]),
    ]
    for i, name in enumerate(names):
        accs = [r["class_accuracy"][i] for r in s["models"].values()]
        cells = ["–" if a is None else f"{100 * a:.1f}" for a in accs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(s["bootstrap"].values()), None)
    if first:
        lines += [
            "",
            f"## Per run: spatial block-bootstrap {100 * first['level']:.0f}% CI",
            "",
            f"Test pixels resampled in {first['block']}×{first['block']}-pixel blocks (at least a "
            f"patch wide; {first['resamples']} resamples), because neighbouring pixels share their "
            "input window and their errors.",
            "",
            "| run | blocks | OA (%) [95% CI] | kappa (%) [95% CI] |",
            "|---|---:|---:|---:|",
        ]
        for name, b in s["bootstrap"].items():
            lines.append(f"| `{name}` | {b['blocks']} | {_ci(b['oa'])} | {_ci(b['kappa'])} |")
    for b, comps in s["comparisons"].items():
        lines += [
            "",
            f"## McNemar against `{b}` per seed (assumes independent pixels: p-values too small "
            "on spatially correlated maps)",
            "",
            f"b = pixels `{b}` gets right and the variant wrong; c = the reverse. Exact "
            "binomial test when b + c < 25, else chi² with continuity correction; Holm-adjusted "
            "across the variants of each seed. Not used for the verdicts.",
            "",
            "| model | seed | ΔOA (pp) | b | c | p | p (Holm) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m, t in comps.items():
            for r in t["mcnemar"]:
                lines.append(
                    f"| `{m}` | {r['seed']} | {100 * r['oa_difference']:+.2f} | {r['b']} | "
                    f"{r['c']} | {r['p_value']:.3g} | {r['p_holm']:.3g} |"
                )
    lines += ["", "Maps of every model side by side: `variants_maps.png`.", ""]
    return "\n".join(lines)
