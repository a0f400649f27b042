"""Metrics against hand-computed values, sklearn and scipy."""

from __future__ import annotations

import json
import warnings
from fractions import Fraction as Fr

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    precision_recall_fscore_support,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from pipeline.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    mcnemar,
    mean_std,
)

HAND_CM = [[50, 2, 3], [5, 40, 5], [0, 10, 35]]


def _labels_from_cm(cm):
    """Expand a confusion matrix back into (y_true, y_pred) pixel lists."""
    t, p = [], []
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            t += [i] * count
            p += [j] * count
    return np.array(t), np.array(p)


def test_confusion_matrix_counts_rows_true_columns_pred():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_confusion_matrix_round_trips_hand_matrix_and_matches_sklearn():
    t, p = _labels_from_cm(HAND_CM)
    rng = np.random.default_rng(1)
    order = rng.permutation(t.size)
    cm = confusion_matrix(t[order], p[order], 3)
    np.testing.assert_array_equal(cm, HAND_CM)
    y_true = rng.integers(0, 7, 500)
    y_pred = rng.integers(0, 7, 500)
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, 9), sk_confusion_matrix(y_true, y_pred, labels=range(9))
    )


def test_confusion_matrix_accepts_2d_maps_and_empty_input():
    cm = confusion_matrix(np.zeros((4, 5), int), np.ones((4, 5), int), 2)
    np.testing.assert_array_equal(cm, [[0, 20], [0, 0]])
    np.testing.assert_array_equal(confusion_matrix([], [], 3), np.zeros((3, 3)))


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([0, 3], [0, 1]), ([0, -1], [0, 1]), ([0, 1], [0, 1, 1]), ([0.5, 1], [0, 1])],
)
def test_confusion_matrix_rejects_bad_labels(y_true, y_pred):
    with pytest.raises(ValueError):
        confusion_matrix(y_true, y_pred, 3)


def test_classification_metrics_hand_computed_3x3():
    m = classification_metrics(HAND_CM, ["a", "b", "c"])
    # n = 150, diagonal 125; rows 55/50/45, columns 55/52/43
    oa = Fr(125, 150)
    recall = [Fr(50, 55), Fr(40, 50), Fr(35, 45)]
    precision = [Fr(50, 55), Fr(40, 52), Fr(35, 43)]
    aa = sum(recall) / 3
    p_e = Fr(55 * 55 + 50 * 52 + 45 * 43, 150**2)  # = 42/125
    kappa = (oa - p_e) / (1 - p_e)  # = 373/498
    assert p_e == Fr(42, 125)
    assert kappa == Fr(373, 498)

    assert m["n"] == 150
    assert m["oa"] == pytest.approx(float(oa), abs=1e-12)
    assert m["aa"] == pytest.approx(float(aa), abs=1e-12)
    assert m["kappa"] == pytest.approx(float(kappa), abs=1e-12)
    for k, row in enumerate(m["per_class"]):
        f1 = 2 * precision[k] * recall[k] / (precision[k] + recall[k])
        assert row["label"] == k
        assert row["name"] == "abc"[k]
        assert row["support"] == sum(HAND_CM[k])
        assert row["precision"] == pytest.approx(float(precision[k]), abs=1e-12)
        assert row["recall"] == pytest.approx(float(recall[k]), abs=1e-12)
        assert row["accuracy"] == row["recall"]
        assert row["f1"] == pytest.approx(float(f1), abs=1e-12)


def test_classification_metrics_is_json_ready_with_fractions():
    m = classification_metrics(np.array(HAND_CM, dtype=np.int32))
    text = json.dumps(m)
    assert json.loads(text) == m
    assert m["per_class"][0]["name"] == "class 0"
    assert 0.0 <= m["oa"] <= 1.0 and 0.0 <= m["aa"] <= 1.0
    assert type(m["n"]) is int and type(m["per_class"][0]["support"]) is int


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = 6
    y_true = rng.integers(0, n_classes, 400)
    noisy = rng.random(400) < 0.4
    y_pred = np.where(noisy, rng.integers(0, n_classes, 400), y_true)
    m = classification_metrics(confusion_matrix(y_true, y_pred, n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(n_classes), zero_division=0
    )
    assert m["oa"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["aa"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    np.testing.assert_allclose([r["precision"] for r in m["per_class"]], precision)
    np.testing.assert_allclose([r["recall"] for r in m["per_class"]], recall)
    np.testing.assert_allclose([r["f1"] for r in m["per_class"]], f1)
    np.testing.assert_array_equal([r["support"] for r in m["per_class"]], support)


def test_classification_metrics_zero_divisions_give_zero_without_warnings():
    # class 1 never predicted; class 2 absent from the test set but predicted once
    cm = np.array([[5, 0, 1], [3, 0, 0], [0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(cm)
    c0, c1, c2 = m["per_class"]
    assert c1["precision"] == 0.0 and c1["recall"] == 0.0 and c1["f1"] == 0.0
    assert c2["support"] == 0 and c2["recall"] == 0.0 and c2["precision"] == 0.0
    assert c0["precision"] == pytest.approx(5 / 8)
    # AA only averages classes with support: (5/6 + 0) / 2
    assert m["aa"] == pytest.approx((5 / 6 + 0.0) / 2)
    assert m["oa"] == pytest.approx(5 / 9)
    y_true, y_pred = _labels_from_cm(cm)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))


def test_classification_metrics_degenerate_cases():
    perfect_single = classification_metrics([[7, 0], [0, 0]])
    assert perfect_single["oa"] == 1.0 and perfect_single["kappa"] == 1.0
    empty = classification_metrics(np.zeros((2, 2), int))
    assert (empty["oa"], empty["aa"], empty["kappa"], empty["n"]) == (0.0, 0.0, 0.0, 0)
    with pytest.raises(ValueError):
        classification_metrics([[1, 2, 3]])
    with pytest.raises(ValueError):
        classification_metrics(HAND_CM, ["only", "two"])


def _paired(b, c, both_right=100, both_wrong=8):
    a = np.array([True] * b + [False] * c + [True] * both_right + [False] * both_wrong)
    bb = np.array([False] * b + [True] * c + [True] * both_right + [False] * both_wrong)
    return a, bb


def test_mcnemar_chi2_path():
    a, b = _paired(30, 12)
    r = mcnemar(a, b)
    assert (r["b"], r["c"], r["exact"]) == (30, 12, False)
    assert r["statistic"] == pytest.approx(17**2 / 42)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(289 / 42, df=1))
    assert r["p_value"] < 0.05


def test_mcnemar_exact_path():
    a, b = _paired(7, 2)
    r = mcnemar(a, b)
    assert (r["b"], r["c"], r["exact"]) == (7, 2, True)
    # two-sided binomial: 2 * P(X >= 7 | n=9, p=1/2) = 2 * (36 + 9 + 1) / 512
    assert r["p_value"] == pytest.approx(92 / 512)
    assert r["p_value"] == pytest.approx(stats.binomtest(7, 9, 0.5).pvalue)
    assert r["statistic"] == pytest.approx(16 / 9)
    json.dumps(r)


def test_mcnemar_switches_to_chi2_at_25_discordant_pixels():
    assert mcnemar(*_paired(20, 4))["exact"] is True
    assert mcnemar(*_paired(20, 5))["exact"] is False


def test_mcnemar_symmetric_and_no_discordance():
    a, b = _paired(30, 12)
    assert mcnemar(b, a)["p_value"] == pytest.approx(mcnemar(a, b)["p_value"])
    same = np.array([True, False, True])
    r = mcnemar(same, same)
    assert r["b"] == r["c"] == 0 and r["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar(np.array([1, 0]), np.array([True, False]))
    with pytest.raises(ValueError):
        mcnemar(np.array([True]), np.array([True, False]))


def test_mean_std():
    r = mean_std([0.9, 0.92, 0.94])
    assert r["n"] == 3
    assert r["mean"] == pytest.approx(0.92)
    assert r["std"] == pytest.approx(0.02)
    assert mean_std([0.8]) == {"mean": 0.8, "std": 0.0, "n": 1}
    assert mean_std(np.array([1.0, 3.0]))["std"] == pytest.approx(np.sqrt(2.0))
    with pytest.raises(ValueError):
        mean_std([])
