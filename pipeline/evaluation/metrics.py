"""Classification metrics reported in HSI papers (OA, AA, kappa, per-class scores) and tests.

All results are plain Python ints/floats so they can be written to JSON as they are.
Fractions are in [0, 1], not percent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

EXACT_MCNEMAR_BELOW = 25


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Count matrix ``cm[t, p]`` of pixels with true label ``t`` predicted as ``p``.

    Labels are 0..n_classes-1; callers shift ground-truth classes 1..C down by one and drop
    unlabelled pixels beforehand, so any other value is a caller bug and raises ValueError.
    """
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        integral = np.issubdtype(arr.dtype, np.integer) or (
            np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))
        )
        if not integral:
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(
                f"{name} holds labels in [{arr.min()}, {arr.max()}], expected 0..{n_classes - 1}"
            )
    flat = t.astype(np.int64) * n_classes + p.astype(np.int64)
    counts = np.bincount(flat, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def classification_metrics(cm, class_names: Sequence[str] | None = None) -> dict:
    """OA, AA, Cohen's kappa and per-class precision/recall/F1 from a confusion matrix.

    ``cm`` has true classes on rows and predictions on columns. AA averages recall over the
    classes present in the test set (support > 0). Undefined ratios (a class never predicted
    or absent from the test set) are reported as 0.0, as sklearn does. Kappa is 1.0 in the
    degenerate case p_e = 1 (a single class, always predicted), where the formula is 0/0.
    Per-class ``label`` is the 0-based row index of ``cm``.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    if np.any(cm < 0):
        raise ValueError("confusion matrix holds negative counts")
    cm = cm.astype(np.int64)
    n_classes = cm.shape[0]
    if class_names is None:
        class_names = [f"class {k}" for k in range(n_classes)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != n_classes:
        raise ValueError(
            f"{len(class_names)} class names given for a {n_classes}x{n_classes} confusion matrix"
        )

    n = int(cm.sum())
    diag = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)

    per_class = []
    for k in range(n_classes):
        precision = _ratio(diag[k], predicted[k])
        recall = _ratio(diag[k], support[k])
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append(
            {
                "label": k,
                "name": class_names[k],
                "support": int(support[k]),
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "accuracy": recall,
            }
        )

    present = support > 0
    aa = float(np.mean(diag[present] / support[present])) if present.any() else 0.0
    oa = _ratio(diag.sum(), n)
    if n > 0:
        chance = sum(int(s) * int(p) for s, p in zip(support, predicted, strict=True))
        p_e = chance / n**2
        kappa = 1.0 if chance == n**2 else (oa - p_e) / (1.0 - p_e)
    else:
        kappa = 0.0
    return {"oa": oa, "aa": aa, "kappa": float(kappa), "n": n, "per_class": per_class}


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test of whether classifiers A and B differ in accuracy on the same pixels.

    ``correct_a``/``correct_b`` flag the test pixels each classifier got right. ``statistic``
    is the continuity-corrected chi-squared value (|b - c| - 1)^2 / (b + c); the p-value comes
    from chi-squared with 1 dof, or from the exact two-sided binomial test when b + c < 25,
    where the chi-squared approximation is poor.
    """
    a = np.asarray(correct_a)
    b_arr = np.asarray(correct_b)
    if a.shape != b_arr.shape:
        raise ValueError(f"correct_a has shape {a.shape} but correct_b has {b_arr.shape}")
    if a.dtype != bool or b_arr.dtype != bool:
        raise ValueError("correct_a and correct_b must be boolean arrays")
    b = int(np.count_nonzero(a & ~b_arr))
    c = int(np.count_nonzero(~a & b_arr))
    discordant = b + c
    exact = discordant < EXACT_MCNEMAR_BELOW
    if discordant == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "exact": True}
    statistic = (abs(b - c) - 1) ** 2 / discordant
    if exact:
        p_value = stats.binomtest(b, n=discordant, p=0.5, alternative="two-sided").pvalue
    else:
        p_value = stats.chi2.sf(statistic, df=1)
    return {
        "b": b,
        "c": c,
        "statistic": float(statistic),
        "p_value": float(min(1.0, p_value)),
        "exact": bool(exact),
    }


def mean_std(values: Iterable[float]) -> dict:
    """Mean and sample standard deviation (ddof=1) over repeated runs; std is 0.0 for one run."""
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(np.mean(arr)), "std": std, "n": int(arr.size)}
