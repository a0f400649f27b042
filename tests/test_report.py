import numpy as np
import pytest

from pipeline.stages.report import compare


def test_mcnemar_per_seed_and_verdicts():
    gt = np.array([1, 1, 2, 2, 3, 3, 1, 2, 3, 1] * 10)
    test = np.ones(gt.shape, bool)
    base = gt.copy()
    base[:30] = 0  # baseline wrong on the first 30 pixels
    better = gt.copy()  # right everywhere: b = 0, c = 30 on each seed
    noisy = gt.copy()
    noisy[28:31] = 0  # wrong on 3 pixels, of which 2 the baseline also misses
    preds = {}
    for seed in (0, 1):
        preds[("hybridsn", seed)] = base
        preds[("hybridsn_se", seed)] = better
        preds[("hybridsn_dsc", seed)] = noisy
    out = compare(preds, gt[test], test, "hybridsn")
    se = out["hybridsn_se"]
    assert [r["seed"] for r in se["per_seed"]] == [0, 1]
    r = se["per_seed"][0]
    assert (r["b"], r["c"]) == (0, 30)
    assert r["statistic"] == pytest.approx((30 - 1) ** 2 / 30)
    assert r["p_value"] < 1e-6 and not r["exact"]
    assert r["oa_difference"] == pytest.approx(0.30)
    assert se["oa_difference"]["mean"] == pytest.approx(0.30)
    assert se["oa_difference"]["std"] == pytest.approx(0.0)
    assert se["verdict"].startswith("better than hybridsn on every seed")
    dsc = out["hybridsn_dsc"]["per_seed"][0]
    assert (dsc["b"], dsc["c"]) == (1, 28)
    assert "hybridsn" not in out


def test_no_difference_is_called_seed_noise():
    gt = np.arange(40) % 4 + 1
    test = np.ones(gt.shape, bool)
    a, b = gt.copy(), gt.copy()
    a[0], b[1] = 0, 0  # one disagreement each way
    preds = {("hybridsn", 0): a, ("hybridsn_2d3d", 0): b}
    out = compare(preds, gt, test, "hybridsn")["hybridsn_2d3d"]
    (r,) = out["per_seed"]
    assert (r["b"], r["c"]) == (1, 1) and r["exact"] and r["p_value"] == pytest.approx(1.0)
    assert "seed noise" in out["verdict"]
