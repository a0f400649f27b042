"""Paired t, Holm, verdicts and the spatial block bootstrap against hand computations."""

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.metrics import classification_metrics, confusion_matrix
from pipeline.evaluation.statistics import block_bootstrap, holm, paired_t, verdict


def test_paired_t_matches_hand_computation_and_scipy():
    base, var = [0.90, 0.91, 0.92], [0.91, 0.93, 0.95]  # differences 0.01, 0.02, 0.03
    r = paired_t(base, var)
    # mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3; Student t with 2 dof has
    # CDF 1/2 + t / (2 sqrt(t^2 + 2)), so p = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12 / 14)
    assert r["n"] == 3 and r["df"] == 2
    assert r["mean"] == pytest.approx(0.02) and r["std"] == pytest.approx(0.01)
    assert r["t"] == pytest.approx(2 * math.sqrt(3))
    assert r["p_value"] == pytest.approx(1 - math.sqrt(12 / 14))
    ref = stats.ttest_rel(var, base)
    assert r["t"] == pytest.approx(ref.statistic) and r["p_value"] == pytest.approx(ref.pvalue)
    assert verdict(r) == "no evidence"


def test_paired_t_without_a_test():
    one = paired_t([0.9], [0.95])
    assert one["p_value"] is None and "2 seeds" in one["reason"]
    flat = paired_t([0.9, 0.8], [0.91, 0.81])
    assert flat["p_value"] is None and "zero variance" in flat["reason"]
    assert verdict(one) == verdict(flat) == "no evidence"
    with pytest.raises(ValueError):
        paired_t([0.9, 0.8], [0.9])


def test_verdicts_follow_sign_and_alpha():
    better = paired_t([0.90, 0.91, 0.92, 0.90], [0.95, 0.955, 0.97, 0.952])
    assert better["p_value"] < 0.05 and verdict(better) == "better"
    worse = paired_t([0.95, 0.955, 0.97, 0.952], [0.90, 0.91, 0.92, 0.90])
    assert verdict(worse) == "worse"
    assert verdict(worse, alpha=worse["p_value"] / 2) == "no evidence"


def test_holm_against_hand_computation():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 -> max(0.06, 0.04)
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([None, 0.2, 0.7]) == [None, pytest.approx(0.4), pytest.approx(0.7)]
    assert holm([0.6, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert holm([]) == []


def test_block_bootstrap_estimates_match_metrics_and_one_block_has_no_spread():
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(np.arange(400), 20)
    t = rng.integers(0, 3, 400)
    p = np.where(rng.random(400) < 0.8, t, rng.integers(0, 3, 400))
    ref = classification_metrics(confusion_matrix(t, p, 3))
    one = block_bootstrap(t, p, rows, cols, 3, block=20, resamples=50)
    assert one["blocks"] == 1
    for name in ("oa", "kappa"):
        assert one[name]["estimate"] == pytest.approx(ref[name])
        assert one[name]["low"] == pytest.approx(ref[name])
        assert one[name]["high"] == pytest.approx(ref[name])
    many = block_bootstrap(t, p, rows, cols, 3, block=5, resamples=500)
    assert many["blocks"] == 16
    assert many["oa"]["low"] < ref["oa"] < many["oa"]["high"]
    assert many["kappa"]["low"] < ref["kappa"] < many["kappa"]["high"]


def test_block_bootstrap_two_blocks_by_hand():
    # left block all right, right block all wrong, 4 pixels each: a draw is (A, A) with
    # probability 1/4 (OA 1), (B, B) 1/4 (OA 0), else OA 1/2; 2.5 / 97.5 percentiles: 0 and 1
    rows = np.zeros(8, dtype=int)
    cols = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    t = np.zeros(8, dtype=int)
    p = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    r = block_bootstrap(t, p, rows, cols, 2, block=4, resamples=4000, seed=1)
    assert r["blocks"] == 2 and r["oa"]["estimate"] == 0.5
    assert (r["oa"]["low"], r["oa"]["high"]) == (0.0, 1.0)


def _correlated_scene(rng, side=60, field=6):
    """Two-class test map whose accuracy varies by field (Beta(2, 0.5), mean 0.8): known OA."""
    rows, cols = np.divmod(np.arange(side * side), side)
    acc = rng.beta(2.0, 0.5, size=(side // field) ** 2)
    fid = (rows // field) * (side // field) + cols // field
    right = rng.random(side * side) < acc[fid]
    t = rng.integers(0, 2, side * side)
    return t, np.where(right, t, 1 - t), rows, cols


def test_block_bootstrap_covers_the_known_oa_and_a_pixel_bootstrap_does_not():
    rng = np.random.default_rng(42)
    reps, hit_block, hit_pixel = 100, 0, 0
    for i in range(reps):
        t, p, rows, cols = _correlated_scene(rng)
        b = block_bootstrap(t, p, rows, cols, 2, block=6, resamples=300, seed=i)
        px = block_bootstrap(t, p, rows, cols, 2, block=1, resamples=300, seed=i)
        hit_block += b["oa"]["low"] <= 0.8 <= b["oa"]["high"]
        hit_pixel += px["oa"]["low"] <= 0.8 <= px["oa"]["high"]
    print(f"coverage of the known OA: block {hit_block / reps:.3f}, pixel {hit_pixel / reps:.3f}")
    assert hit_block / reps >= 0.88, hit_block / reps
    assert hit_pixel / reps <= 0.7, hit_pixel / reps


def test_block_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="block"):
        block_bootstrap([0], [0], [0], [0], 1, block=0)
    with pytest.raises(ValueError, match="equal length"):
        block_bootstrap([0, 1], [0], [0], [0], 2, block=3)
