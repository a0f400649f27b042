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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
RESAMPLES = 2000


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
    if n < 2:
        out["reason"] = "a paired test needs at least 2 seeds"
        return out
    sd = float(d.std(ddof=1))
    out["std"] = sd
    if sd == 0.0:
        out["reason"] = "the differences do not vary across seeds (zero variance)"
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
