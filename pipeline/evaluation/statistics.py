"""Did a change really help? Tests of a variant against the baseline, over seeds and over space.

- :func:`paired_t`: paired t-test across seeds on OA (the verdict). Chosen over the exact
  Wilcoxon signed-rank test because with the 3-5 seeds we can afford, Wilcoxon's smallest
  attainable two-sided p-value is 2 / 2^n (0.25 for 3 seeds, 0.0625 for 5): it could never
  reach alpha = 0.05. The t-test's normality assumption is mild here: each run's OA averages
  thousands of test pixels, so seed-to-seed differences are close to normal.
- :func:`block_bootstrap`: 95 % CI of OA and kappa for one run, resampling square blocks of
  test pixels (at least a patch wide) instead of pixels, because neighbouring pixels share most
  of their input window and their errors are correlated; a pixel bootstrap would be too narrow.
- :func:`holm`: Holm's step-down correction for the per-seed McNemar tests across variants.
  McNemar (:func:`pipeline.evaluation.metrics.mcnemar`) assumes independent pixels, so its
  p-values are too small on spatially correlated maps (Foody 2004): reported, never the verdict.

Spatial k-fold cross-validation (every labelled pixel tested once, optionally several seeds per
fold):

- :func:`corrected_resampled_t`: Nadeau & Bengio's (2003) corrected resampled t-test. The
  training sets of different folds overlap, so the fold scores are positively correlated and a
  plain paired t-test over folds underestimates the variance of their mean (too liberal); the
  correction inflates it by (1/J + n_test/n_train) instead of 1/J.
- :func:`fold_comparison`: one variant against one baseline from scores keyed by (fold, seed):
  the corrected test over folds, or :func:`paired_t` across seeds when there is a single split.
- :func:`pooled_metrics`: OA, AA, kappa and per-class accuracy over the union of the folds'
  out-of-fold predictions, plus the per-fold scores with mean and std.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

from pipeline.evaluation.metrics import classification_metrics, confusion_matrix, mean_std

ALPHA = 0.05
RESAMPLES = 2000


def _spread(out: dict, d: np.ndarray, test: str, units: str) -> float | None:
    """The differences' sample std, stored in ``out``; None, with ``out["reason"]``, when ``test``
    cannot run (fewer than 2 units, or no variance)."""
    if d.size < 2:
        out["reason"] = f"{test} needs at least 2 {units}"
        return None
    out["std"] = sd = float(d.std(ddof=1))
    if sd == 0.0:
        out["reason"] = f"the differences do not vary across {units.split()[0]} (zero variance)"
        return None
    return sd


def paired_t(baseline: Sequence[float], variant: Sequence[float]) -> dict:
    """Two-sided paired t-test of ``variant - baseline`` (one pair per seed).

    Returns n, the mean and sample std of the differences, t, df and p. With fewer than two
    pairs, or differences all equal (zero variance), there is no test: t and p are None and
    ``reason`` says why.
    """
    a = np.asarray(baseline, dtype=np.float64).ravel()
    b = np.asarray(variant, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{a.size} baseline values but {b.size} variant values")
    d = b - a
    n = int(d.size)
    out = {"n": n, "mean": float(d.mean()) if n else 0.0, "std": 0.0, "t": None, "df": n - 1}
    out["p_value"], out["reason"] = None, ""
    if (sd := _spread(out, d, "a paired test", "seeds")) is None:
        return out
    t = out["mean"] / (sd / np.sqrt(n))
    out["t"] = float(t)
    out["p_value"] = float(2.0 * stats.t.sf(abs(t), df=n - 1))
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); None entries stay None."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: p_values[i])
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def verdict(test: dict, alpha: float = ALPHA) -> str:
    """'better', 'worse' or 'no evidence' from a :func:`paired_t` result."""
    p = test["p_value"]
    if p is None or p >= alpha:
        return "no evidence"
    return "better" if test["mean"] > 0 else "worse"


def _oa_kappa(cms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OA and Cohen's kappa of a stack (..., C, C) of confusion matrices."""
    n = cms.sum(axis=(-2, -1)).astype(np.float64)
    safe = np.maximum(n, 1)
    po = np.trace(cms, axis1=-2, axis2=-1) / safe
    pe = (cms.sum(-1) * cms.sum(-2)).sum(-1) / safe**2
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(pe < 1, (po - pe) / (1 - pe), 1.0)
    return po, kappa


def block_bootstrap(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    n_classes: int,
    block: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile CI of OA and kappa, resampling ``block`` x ``block`` squares of the scene.

    Test pixel i (labels 0..n_classes-1) lies at (rows[i], cols[i]); the scene is cut into
    squares on a grid from (0, 0); the non-empty squares are drawn with replacement, as many as
    there are, and each draw's confusion matrix is the sum of its squares'. ``block`` should be
    at least the patch size so pixels sharing a window mostly fall in the same square.
    """
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    r, c = np.asarray(rows).ravel(), np.asarray(cols).ravel()
    if not (t.size == p.size == r.size == c.size) or t.size == 0:
        raise ValueError("y_true, y_pred, rows and cols must be non-empty and of equal length")
    if int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    k = int(n_classes)
    key = (r // block) * (int(c.max()) // block + 1) + c // block
    _, blk = np.unique(key, return_inverse=True)
    nb = int(blk.max()) + 1
    per_block = np.bincount(blk * k * k + t * k + p, minlength=nb * k * k).reshape(nb, k * k)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, nb, size=(resamples, nb))
    flat = (np.arange(resamples)[:, None] * nb + draws).ravel()
    weights = np.bincount(flat, minlength=resamples * nb).reshape(resamples, nb).astype(float)
    cms = (weights @ per_block).reshape(resamples, k, k)
    oa_b, kappa_b = _oa_kappa(cms)
    oa, kappa = _oa_kappa(per_block.sum(0).reshape(k, k))
    tail = 100 * (1 - level) / 2
    out = {"block": int(block), "blocks": nb, "resamples": int(resamples), "level": level}
    for name, est, boot in (("oa", oa, oa_b), ("kappa", kappa, kappa_b)):
        lo, hi = np.percentile(boot, [tail, 100 - tail])
        out[name] = {"estimate": float(est), "low": float(lo), "high": float(hi)}
    return out


def corrected_resampled_t(
    baseline: Sequence[float],
    variant: Sequence[float],
    n_train: float,
    n_test: float,
    *,
    folds: Sequence[Hashable] | None = None,
) -> dict:
    """Nadeau & Bengio's corrected resampled t-test of ``variant - baseline`` (two-sided).

    Over J resamples with differences d_j: t = mean(d) / sqrt((1/J + n_test/n_train) s^2) with
    J - 1 dof (Nadeau & Bengio, Machine Learning 52:239-281, 2003). The n_test/n_train term
    accounts for the correlation between resamples whose training sets overlap, assumed to be
    n_test/n; the plain paired t-test is the case n_test/n_train = 0. Under repeated k-fold with
    the partition redrawn each repetition, all k x r pairs enter the same formula (Bouckaert &
    Frank's corrected repeated k-fold cv test, PAKDD 2004). ``n_train``/``n_test`` may be mean
    sizes over folds.

    ``folds`` gives each pair's train/test partition (its fold id). Pairs sharing a partition
    differ only in their seed, not in their data, so they are averaged into one resample first:
    counting them as separate resamples understates the variance when seed noise is small next
    to fold-to-fold variation (a 5-fold x 3-seed simulation rejected a true null ~15 % of the
    time at alpha = 0.05, against <= 5 % on the fold means). Returns n (resamples tested), pairs,
    folds (distinct partitions, or None), the mean and sample std of the differences over the
    resamples, t, df, p_value, ``correction`` (1/J + n_test/n_train) and ``ratio``
    (n_test/n_train); without a test (fewer than 2 resamples, zero variance) t and p_value are
    None and ``reason`` says why.
    """
    a = np.asarray(baseline, dtype=np.float64).ravel()
    b = np.asarray(variant, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{a.size} baseline values but {b.size} variant values")
    if not n_train > 0 or not n_test >= 0:
        raise ValueError(f"need n_train > 0 and n_test >= 0, got {n_train} and {n_test}")
    d = b - a
    n_folds = None
    if folds is not None:
        labels = list(folds)
        if len(labels) != d.size:
            raise ValueError(f"{len(labels)} fold labels for {d.size} pairs")
        order = list(dict.fromkeys(labels))
        groups = {f: [] for f in order}
        for f, x in zip(labels, d, strict=True):
            groups[f].append(x)
        d = np.array([np.mean(groups[f]) for f in order])
        n_folds = len(order)
    j = int(d.size)
    ratio = float(n_test) / float(n_train)
    correction = 1.0 / j + ratio if j else None
    out = {"n": j, "pairs": int(a.size), "folds": n_folds, "mean": float(d.mean()) if j else 0.0}
    out |= {"std": 0.0, "t": None, "df": j - 1, "p_value": None, "reason": ""}
    out |= {"correction": correction, "ratio": ratio}
    if (sd := _spread(out, d, "a corrected resampled t-test", "resamples (folds)")) is None:
        return out
    t = out["mean"] / np.sqrt(correction * sd**2)
    out["t"] = float(t)
    out["p_value"] = float(2.0 * stats.t.sf(abs(t), df=j - 1))
    return out


def _oa_of(score) -> float:
    return float(score["oa"] if isinstance(score, Mapping) else score)


def _mean_size(size, folds: list) -> float:
    if isinstance(size, Mapping):
        missing = [f for f in folds if f not in size]
        if missing:
            raise ValueError(f"no training/test size for fold(s) {missing}")
        return float(np.mean([size[f] for f in folds]))
    return float(size)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def fold_comparison(
    baseline_scores: Mapping[tuple[Hashable, Hashable], float | Mapping],
    variant_scores: Mapping[tuple[Hashable, Hashable], float | Mapping],
    *,
    model: str,
    baseline: str,
    n_train: float | Mapping[Hashable, float] | None = None,
    n_test: float | Mapping[Hashable, float] | None = None,
    alpha: float = ALPHA,
) -> dict:
    """``model`` against ``baseline`` on OA, from per-cell scores keyed by (fold, seed).

    A score is an OA or a metrics dict with an ``oa`` key. Cells scored for both are paired by
    key; the others are listed under ``unpaired`` and left out. Over several folds the verdict
    comes from :func:`corrected_resampled_t` on the fold means (seeds of one fold averaged), which
    needs ``n_train``/``n_test``: sizes, or dicts fold -> size averaged over the paired folds.
    When every paired cell is in one fold (one split, several seeds: the paper protocol) there is
    no fold resampling to correct for, and it falls back to :func:`paired_t` across seeds.
    ``oa_difference`` is the mean and std of the ΔOA over the tested units (fold means, or seeds).
    Raises ValueError when no cell is scored for both.
    """
    cells = sorted(set(baseline_scores) & set(variant_scores))
    if not cells:
        raise ValueError(f"no (fold, seed) cell is scored for both `{model}` and `{baseline}`")
    unpaired = sorted(set(baseline_scores) ^ set(variant_scores))
    base = [_oa_of(baseline_scores[c]) for c in cells]
    var = [_oa_of(variant_scores[c]) for c in cells]
    fold_of = [f for f, _ in cells]
    folds = list(dict.fromkeys(fold_of))
    per_fold = {f: fold_of.count(f) for f in folds}
    if len(folds) == 1:
        method = "paired t-test"
        test = paired_t(base, var)
        diffs = [v - b for b, v in zip(base, var, strict=True)]
        span = f"{_plural(len(cells), 'seed')} on one split"
        label = "paired t-test across seeds (one fold, no fold correction)"
    else:
        if n_train is None or n_test is None:
            raise ValueError("several folds: n_train and n_test are needed for the correction")
        method = "corrected resampled t-test"
        test = corrected_resampled_t(
            base, var, _mean_size(n_train, folds), _mean_size(n_test, folds), folds=fold_of
        )
        diffs = [
            np.mean([v - b for (f, _), b, v in zip(cells, base, var, strict=True) if f == g])
            for g in folds
        ]
        counts = sorted(set(per_fold.values()))
        seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        span = f"{_plural(len(folds), 'fold')} × {seeds} seed" + ("" if seeds == "1" else "s")
        label = method if counts == [1] else f"{method} on fold means"
    diff = mean_std(diffs)
    word = verdict(test, alpha)
    what = {
        "better": f"better than `{baseline}`",
        "worse": f"worse than `{baseline}`",
        "no evidence": f"no evidence of a difference from `{baseline}`",
    }[word]
    why = f"{label} p = {test['p_value']:.3g}" if test["p_value"] is not None else test["reason"]
    line = (
        f"`{model}`: {what} at α = {alpha} (ΔOA {100 * diff['mean']:+.2f} ± "
        f"{100 * diff['std']:.2f} pp over {span}; {why})"
    )
    return {
        "method": method,
        "cells": [list(c) for c in cells],
        "unpaired": [list(c) for c in unpaired],
        "folds": len(folds),
        "seeds_per_fold": per_fold,
        "oa_difference": diff,
        "test": test,
        "verdict": word,
        "verdict_line": line,
    }


def pooled_metrics(
    folds: Mapping[Hashable, tuple] | Sequence[tuple],
    n_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    pixels: Mapping[Hashable, Sequence[int]] | Sequence[Sequence[int]] | None = None,
) -> dict:
    """Scores of k-fold cross-validation: over the pooled out-of-fold predictions, and per fold.

    ``folds`` maps each fold (or lists, in fold order) to ``(y_true, y_pred)`` on its own test
    pixels, labels 0..n_classes-1; together they should cover every labelled pixel once (one
    seed's run: call once per seed). ``pixels``, aligned with ``folds``, gives each fold's test
    pixel ids (flat indices), and a pixel tested in two folds raises ValueError.

    The pooled confusion matrix is the sum of the folds': ``oa``, ``aa``, ``kappa``, ``n``,
    ``per_class`` (from :func:`classification_metrics`), ``class_accuracy`` (recall; None for a
    class with no pixels) and ``class_counts``. ``per_fold`` holds each fold's oa, aa, kappa, n,
    class counts and ``absent`` classes; a fold's AA averages recall over the classes it has test
    pixels of (an absent class has no recall to average, so it is left out rather than scored
    0). ``fold_mean`` has mean and std over folds of oa, aa and kappa.
    """
    items = list(folds.items()) if isinstance(folds, Mapping) else list(enumerate(folds))
    if not items:
        raise ValueError("pooled_metrics needs at least one fold")
    if pixels is not None:
        ids = [pixels[f] for f, _ in items]
        for (f, (t, _)), px in zip(items, ids, strict=True):
            if len(px) != len(np.ravel(t)):
                raise ValueError(f"fold {f}: {len(px)} pixel ids for {len(np.ravel(t))} labels")
        flat = np.concatenate([np.asarray(px, dtype=np.int64).ravel() for px in ids])
        uniq, counts = np.unique(flat, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"pixels tested in more than one fold, e.g. {uniq[counts > 1][:5]}")
    per_fold, total = [], np.zeros((n_classes, n_classes), dtype=np.int64)
    for f, (y_true, y_pred) in items:
        cm = confusion_matrix(y_true, y_pred, n_classes)
        total += cm
        m = classification_metrics(cm, class_names)
        support = cm.sum(axis=1)
        per_fold.append(
            {
                "fold": f,
                **{k: m[k] for k in ("oa", "aa", "kappa", "n")},
                "class_counts": [int(x) for x in support],
                "absent": [k for k in range(n_classes) if support[k] == 0],
            }
        )
    pooled = classification_metrics(total, class_names)
    return {
        **pooled,
        "class_accuracy": [c["recall"] if c["support"] else None for c in pooled["per_class"]],
        "class_counts": [c["support"] for c in pooled["per_class"]],
        "per_fold": per_fold,
        "fold_mean": {k: mean_std([r[k] for r in per_fold]) for k in ("oa", "aa", "kappa")},
    }
