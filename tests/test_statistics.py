"""Paired t, Holm, verdicts, the spatial block bootstrap and the k-fold statistics (corrected
resampled t-test, fold comparison, pooled metrics) against hand computations and simulations."""

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.metrics import classification_metrics, confusion_matrix
from pipeline.evaluation.statistics import (
    block_bootstrap,
    corrected_resampled_t,
    fold_comparison,
    holm,
    paired_t,
    pooled_metrics,
    verdict,
)


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


def test_corrected_resampled_t_matches_hand_computation_and_is_more_cautious():
    base = [0.80, 0.82, 0.81, 0.79, 0.83]
    var = [0.82, 0.83, 0.84, 0.84, 0.87]  # differences 0.02, 0.01, 0.03, 0.05, 0.04
    r = corrected_resampled_t(base, var, n_train=400, n_test=100)
    # mean 0.03, s^2 = 2.5e-4, correction 1/5 + 1/4 = 0.45: t = 0.03 / sqrt(1.125e-4) = 2 sqrt 2.
    # Student t with 4 dof: two-sided p = 1 - I_x(1/2, 2) = 1 - sqrt(x) (3 - x) / 2, x = t^2 /
    # (t^2 + 4) = 2/3, so p = 1 - (7/6) sqrt(2/3); the plain test has t = 3 sqrt 2, x = 9/11
    assert r["n"] == r["pairs"] == 5 and r["df"] == 4 and r["folds"] is None
    assert r["mean"] == pytest.approx(0.03) and r["std"] == pytest.approx(math.sqrt(2.5e-4))
    assert r["correction"] == pytest.approx(0.45) and r["ratio"] == pytest.approx(0.25)
    assert r["t"] == pytest.approx(2 * math.sqrt(2))
    assert r["p_value"] == pytest.approx(1 - 7 / 6 * math.sqrt(2 / 3))
    plain = paired_t(base, var)
    assert plain["t"] == pytest.approx(3 * math.sqrt(2))
    assert plain["p_value"] == pytest.approx(1 - math.sqrt(9 / 11) * (3 - 9 / 11) / 2)
    assert r["p_value"] > 3 * plain["p_value"]
    assert verdict(r) == "better"


def test_corrected_resampled_t_tends_to_the_plain_test_as_the_test_share_vanishes():
    base, var = [0.80, 0.82, 0.81, 0.79, 0.83], [0.81, 0.85, 0.80, 0.83, 0.84]
    plain = paired_t(base, var)
    gaps = [
        abs(corrected_resampled_t(base, var, 1000, n_test)["p_value"] - plain["p_value"])
        for n_test in (250, 25, 2.5, 0.025)
    ]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0.05
    assert gaps[-1] < 1e-4
    zero = corrected_resampled_t(base, var, 1000, 0)
    assert zero["t"] == pytest.approx(plain["t"]) and zero["p_value"] == pytest.approx(
        plain["p_value"]
    )


def test_corrected_resampled_t_without_a_test_and_bad_input():
    one = corrected_resampled_t([0.9], [0.95], 400, 100)
    assert one["p_value"] is None and "at least 2" in one["reason"]
    flat = corrected_resampled_t([0.9, 0.8, 0.7], [0.91, 0.81, 0.71], 400, 100)
    assert flat["p_value"] is None and "zero variance" in flat["reason"]
    assert verdict(one) == verdict(flat) == "no evidence"
    same_fold = corrected_resampled_t([0.9, 0.8], [0.95, 0.9], 400, 100, folds=[0, 0])
    assert same_fold["n"] == 1 and same_fold["pairs"] == 2 and same_fold["p_value"] is None
    with pytest.raises(ValueError, match="baseline"):
        corrected_resampled_t([0.9, 0.8], [0.9], 400, 100)
    with pytest.raises(ValueError, match="n_train"):
        corrected_resampled_t([0.9, 0.8], [0.9, 0.7], 0, 100)
    with pytest.raises(ValueError, match="fold labels"):
        corrected_resampled_t([0.9, 0.8], [0.9, 0.7], 400, 100, folds=[0])


def test_corrected_resampled_t_averages_the_seeds_of_a_fold():
    base = [0.80, 0.81, 0.70, 0.72, 0.90, 0.91]
    var = [0.82, 0.84, 0.71, 0.75, 0.93, 0.95]  # fold means of the differences 0.025, 0.02, 0.035
    r = corrected_resampled_t(base, var, 200, 100, folds=["a", "a", "b", "b", "c", "c"])
    ref = corrected_resampled_t([0, 0, 0], [0.025, 0.02, 0.035], 200, 100)
    assert r["n"] == 3 and r["pairs"] == 6 and r["folds"] == 3 and r["df"] == 2
    assert r["correction"] == pytest.approx(1 / 3 + 1 / 2)
    assert r["t"] == pytest.approx(ref["t"]) and r["p_value"] == pytest.approx(ref["p_value"])


K_FOLDS, FOLD_SIZE = 5, 20


def _null_kfold_differences(rng, reps, seeds=1, seed_noise=0.0):
    """ΔOA of two equally good classifiers under k-fold CV on n = k m samples, ``reps`` times.

    Sample i shifts the difference of the models trained on it by u_i / n_train and, when tested,
    adds e_i / n_test: d_j = mean(u over the training set of fold j) + mean(e over its test set).
    Training sets of two folds share n - 2m samples, which correlates the fold scores. With
    var(u) = (k-1)^2 / (k^2 - 3k + 1) var(e) the correlation is n_test / n, the value Nadeau &
    Bengio's correction assumes. Seeds add independent noise (``seed_noise`` fold sds) per cell.
    Returns (reps, k, seeds) differences.
    """
    k, m = K_FOLDS, FOLD_SIZE
    u = rng.normal(0.0, (k - 1) / math.sqrt(k * k - 3 * k + 1), (reps, k, m))
    e = rng.normal(0.0, 1.0, (reps, k, m))
    train = (u.sum(axis=(1, 2))[:, None] - u.sum(axis=2)) / ((k - 1) * m)
    d = train + e.mean(axis=2)
    sd = math.sqrt(((k - 1) / (k * k - 3 * k + 1) + 1) / m)
    return d[:, :, None] + rng.normal(0.0, seed_noise * sd, (reps, k, seeds))


def test_corrected_test_holds_its_size_where_the_plain_test_over_folds_does_not():
    rng = np.random.default_rng(7)
    reps = 2000
    d = 0.01 * _null_kfold_differences(rng, reps)[:, :, 0]
    base = 0.85 + 0.02 * rng.normal(size=(reps, K_FOLDS))
    n_train, n_test = (K_FOLDS - 1) * FOLD_SIZE, FOLD_SIZE
    corrected = plain = 0
    for b, v in zip(base, base + d, strict=True):
        corrected += corrected_resampled_t(b, v, n_train, n_test)["p_value"] < 0.05
        plain += paired_t(b, v)["p_value"] < 0.05
    print(f"type-I error at alpha 0.05: corrected {corrected / reps}, plain {plain / reps}")
    assert 0.035 <= corrected / reps <= 0.065, corrected / reps
    assert plain / reps >= 0.11 and plain > 2 * corrected, plain / reps


def _cells(values, folds, seeds):
    return {(f, s): float(values[i, j]) for i, f in enumerate(folds) for j, s in enumerate(seeds)}


def test_fold_comparison_holds_its_size_with_several_seeds_per_fold():
    rng = np.random.default_rng(11)
    reps, seeds = 1500, (0, 1, 2)
    d = 0.01 * _null_kfold_differences(rng, reps, seeds=3, seed_noise=0.25)
    n_train, n_test = (K_FOLDS - 1) * FOLD_SIZE, FOLD_SIZE
    base = np.full((K_FOLDS, 3), 0.85)
    helper = pooled = 0
    for x in d:
        r = fold_comparison(
            _cells(base, range(K_FOLDS), seeds),
            _cells(base + x, range(K_FOLDS), seeds),
            model="m",
            baseline="b",
            n_train=n_train,
            n_test=n_test,
        )
        helper += r["verdict"] != "no evidence"
        pooled += (
            corrected_resampled_t(base.ravel(), (base + x).ravel(), n_train, n_test)["p_value"]
            < 0.05
        )
    print(f"5 folds x 3 seeds: fold means {helper / reps}, all 15 cells pooled {pooled / reps}")
    assert helper / reps <= 0.07, helper / reps
    assert pooled / reps >= 0.1 and pooled > 2 * helper, pooled / reps


def test_fold_comparison_pairs_cells_by_key_and_ignores_unpaired_ones():
    base = {(0, 0): 0.80, (1, 0): 0.70, (2, 0): 0.90, (3, 0): 0.60, (4, 0): 0.75, (5, 0): 0.5}
    var = {
        (4, 0): 0.79,
        (2, 0): 0.91,
        (0, 0): {"oa": 0.83, "aa": 0.5},
        (3, 0): 0.62,
        (1, 0): 0.70,
        (6, 0): 0.99,
    }
    r = fold_comparison(base, var, model="hybridsn_se", baseline="svm", n_train=400, n_test=100)
    keys = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]
    ref = corrected_resampled_t(
        [base[k] for k in keys], [0.83, 0.70, 0.91, 0.62, 0.79], 400, 100, folds=[0, 1, 2, 3, 4]
    )
    assert r["cells"] == [list(k) for k in keys] and r["unpaired"] == [[5, 0], [6, 0]]
    assert r["method"] == "corrected resampled t-test" and r["folds"] == 5
    assert r["test"]["mean"] == pytest.approx(0.02) and r["test"]["n"] == 5
    assert r["test"]["p_value"] == pytest.approx(ref["p_value"])
    assert r["oa_difference"]["mean"] == pytest.approx(0.02)
    assert r["oa_difference"]["std"] == pytest.approx(ref["std"])
    assert r["verdict"] == verdict(ref) == "no evidence"
    assert r["verdict_line"] == (
        "`hybridsn_se`: no evidence of a difference from `svm` at α = 0.05 (ΔOA +2.00 ± "
        f"{100 * ref['std']:.2f} pp over 5 folds × 1 seed; corrected resampled t-test "
        f"p = {ref['p_value']:.3g})"
    )


def test_fold_comparison_averages_seeds_and_takes_per_fold_sizes():
    folds, seeds = ("a", "b", "c"), (1, 2)
    base = np.array([[0.80, 0.81], [0.70, 0.72], [0.90, 0.91]])
    var = base + np.array([[0.03, 0.05], [0.04, 0.04], [0.05, 0.07]])
    r = fold_comparison(
        _cells(base, folds, seeds),
        _cells(var, folds, seeds),
        model="v",
        baseline="b",
        n_train={"a": 300, "b": 200, "c": 100, "unused": 5},
        n_test={"a": 100, "b": 150, "c": 200},
    )
    ref = corrected_resampled_t([0, 0, 0], [0.04, 0.04, 0.06], 200, 150)
    assert r["test"]["n"] == 3 and r["test"]["pairs"] == 6 and r["seeds_per_fold"]["a"] == 2
    assert r["test"]["ratio"] == pytest.approx(0.75)
    assert r["test"]["p_value"] == pytest.approx(ref["p_value"])
    assert (
        "over 3 folds × 2 seeds; corrected resampled t-test on fold means p ="
        in (r["verdict_line"])
    )
    with pytest.raises(ValueError, match="n_train and n_test"):
        fold_comparison(
            _cells(base, folds, seeds), _cells(var, folds, seeds), model="v", baseline="b"
        )
    with pytest.raises(ValueError, match="fold"):
        fold_comparison({(0, 0): 0.8}, {(1, 0): 0.9}, model="v", baseline="b")


def test_fold_comparison_falls_back_to_the_paired_t_test_on_one_split():
    base = {("paper", 0): 0.90, ("paper", 1): 0.91, ("paper", 2): 0.92, ("paper", 9): 0.5}
    var = {("paper", 2): 0.95, ("paper", 0): 0.91, ("paper", 1): 0.93}
    r = fold_comparison(base, var, model="hybridsn_se", baseline="hybridsn")
    ref = paired_t([0.90, 0.91, 0.92], [0.91, 0.93, 0.95])
    assert r["method"] == "paired t-test" and r["folds"] == 1 and r["unpaired"] == [["paper", 9]]
    assert r["test"]["p_value"] == pytest.approx(ref["p_value"])
    assert r["oa_difference"]["mean"] == pytest.approx(0.02)
    assert r["verdict_line"] == (
        "`hybridsn_se`: no evidence of a difference from `hybridsn` at α = 0.05 (ΔOA +2.00 ± 1.00 "
        f"pp over 3 seeds on one split; paired t-test across seeds (one fold, no fold correction) "
        f"p = {ref['p_value']:.3g})"
    )
    one = fold_comparison({(0, 0): 0.9}, {(0, 0): 0.95}, model="v", baseline="b")
    assert one["verdict"] == "no evidence" and "at least 2 seeds" in one["verdict_line"]


def test_pooled_metrics_equal_metrics_on_the_concatenated_predictions():
    rng = np.random.default_rng(3)
    n, k, c = 500, 5, 4
    t = rng.integers(0, c, n)
    p = np.where(rng.random(n) < 0.7, t, rng.integers(0, c, n))
    fold = rng.permutation(np.arange(n) % k)
    folds = {f: (t[fold == f], p[fold == f]) for f in range(k)}
    pixels = {f: np.flatnonzero(fold == f) for f in range(k)}
    r = pooled_metrics(folds, c, pixels=pixels)
    ref = classification_metrics(confusion_matrix(t, p, c))
    for name in ("oa", "aa", "kappa", "n"):
        assert r[name] == pytest.approx(ref[name])
    support = np.bincount(t, minlength=c)
    assert r["class_counts"] == support.tolist()
    assert r["class_accuracy"] == pytest.approx(np.bincount(t[t == p], minlength=c) / support)
    per = [classification_metrics(confusion_matrix(*folds[f], c)) for f in range(k)]
    assert [x["oa"] for x in r["per_fold"]] == pytest.approx([x["oa"] for x in per])
    for name in ("oa", "aa", "kappa"):
        vals = [x[name] for x in per]
        assert r["fold_mean"][name]["mean"] == pytest.approx(np.mean(vals))
        assert r["fold_mean"][name]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert pooled_metrics(list(folds.values()), c)["kappa"] == pytest.approx(ref["kappa"])
    pixels[1] = np.append(pixels[1][1:], pixels[0][0])
    with pytest.raises(ValueError, match="more than one fold"):
        pooled_metrics(folds, c, pixels=pixels)


def test_pooled_metrics_by_hand_with_a_class_missing_from_a_fold():
    # fold 0: class 0 2/2 right, class 1 1/2, class 2 absent. fold 1: class 0 0/1, class 2 2/3
    folds = [([0, 0, 1, 1], [0, 0, 1, 0]), ([0, 2, 2, 2], [1, 2, 2, 0])]
    r = pooled_metrics(folds, 3, class_names=["corn", "soy", "wood"])
    assert r["class_counts"] == [3, 2, 3]
    assert r["class_accuracy"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert r["oa"] == pytest.approx(5 / 8) and r["aa"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    f0, f1 = r["per_fold"]
    assert f0["absent"] == [2] and f1["absent"] == [1]
    assert f0["aa"] == pytest.approx((1 + 1 / 2) / 2) and f1["aa"] == pytest.approx((0 + 2 / 3) / 2)
    assert r["fold_mean"]["aa"]["mean"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert all(math.isfinite(x["kappa"]) for x in r["per_fold"])
    assert r["per_class"][2]["name"] == "wood"
    none = pooled_metrics([([0, 0], [0, 1])], 2)
    assert none["class_accuracy"] == [0.5, None] and none["aa"] == pytest.approx(0.5)
