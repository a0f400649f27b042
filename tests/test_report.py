import numpy as np
import pytest

from pipeline.evaluation.comparison import (
    Cell,
    bootstrap_runs,
    compare,
    pool,
    summarize,
    summary_markdown,
)
from pipeline.evaluation.statistics import holm


def _preds():
    gt = np.array([1, 1, 2, 2, 3, 3, 1, 2, 3, 1] * 10)
    wrong = gt % 3 + 1
    base = gt.copy()
    base[:30] = wrong[:30]  # baseline wrong on the first 30 pixels
    better = gt.copy()  # right everywhere: b = 0, c = 30 on each seed
    preds = {}
    for seed in (0, 1, 2):
        noisy = gt.copy()
        noisy[28 : 31 + seed] = wrong[28 : 31 + seed]  # 3..5 errors, 2 shared with the baseline
        b = base.copy()
        b[-1 - seed :] = wrong[-1 - seed :]  # seed-to-seed variation of the baseline
        preds[("hybridsn", seed)] = b
        preds[("hybridsn_se", seed)] = better
        preds[("hybridsn_dsc", seed)] = noisy
    return gt, preds


def _cells(gt, preds, shape=None, fold=0, test=None):
    """One evaluated cell per (model, seed) on one split."""
    test = np.ones(gt.shape, bool) if test is None else test
    out = []
    for (m, s), p in preds.items():
        pred, labels, t = (p, gt, test) if shape is None else (
            np.resize(p, shape), np.resize(gt, shape), np.ones(shape, bool)
        )  # fmt: skip
        oa = float((pred[t] == labels[t]).mean())
        train = {"train_pixels": 100, "epochs_run": 26 + s, "n_params": 10}
        out.append(Cell(m, s, fold, pred, t, {"oa": oa, "n_test": int(t.sum())}, train))
    return out


def test_mcnemar_per_seed_with_holm_and_paired_t_verdicts():
    gt, preds = _preds()
    out = compare(_cells(gt, preds), gt, "hybridsn")
    assert "hybridsn" not in out and set(out) == {"hybridsn_se", "hybridsn_dsc"}
    se = out["hybridsn_se"]
    assert [r["seed"] for r in se["mcnemar"]] == [0, 1, 2]
    r = se["mcnemar"][0]
    assert (r["b"], r["c"]) == (0, 31)
    assert r["statistic"] == pytest.approx((31 - 1) ** 2 / 31)
    assert r["p_value"] < 1e-6 and not r["exact"]
    assert r["oa_difference"] == pytest.approx(0.31)
    dsc = out["hybridsn_dsc"]["mcnemar"][0]
    assert (dsc["b"], dsc["c"]) == (1, 29)
    for seed in (0, 1, 2):
        raw = [out[m]["mcnemar"][seed]["p_value"] for m in ("hybridsn_se", "hybridsn_dsc")]
        adj = [out[m]["mcnemar"][seed]["p_holm"] for m in ("hybridsn_se", "hybridsn_dsc")]
        assert adj == pytest.approx(holm(raw))
        assert adj[0] > raw[0] or adj[0] == 1.0
    diffs = [0.31, 0.32, 0.33]  # baseline loses one more pixel per seed
    assert se["oa_difference"]["mean"] == pytest.approx(np.mean(diffs))
    assert se["test"]["n"] == 3 and se["method"] == "paired t-test"
    assert se["test"]["p_value"] < 0.05 and se["verdict"] == "better"
    assert se["verdict_line"].startswith("`hybridsn_se`: better than `hybridsn` at α = 0.05")
    assert "pooled" not in str(out) and "b_sum" not in str(out)


def test_no_difference_is_no_evidence():
    gt = np.arange(40) % 4 + 1
    preds = {}
    for s in (0, 1, 2):
        a, b = gt.copy(), gt.copy()
        a[s], b[(s + 1) % 3 + 10 * (s == 1)] = 0, 0  # one error each, differences 0, 0, 0 or so
        preds[("hybridsn", s)], preds[("hybridsn_2d3d", s)] = a, b
    out = compare(_cells(gt, preds), gt, "hybridsn")["hybridsn_2d3d"]
    (r, *_) = out["mcnemar"]
    assert (r["b"], r["c"]) == (1, 1) and r["exact"] and r["p_value"] == pytest.approx(1.0)
    assert out["verdict"] == "no evidence"
    assert "no evidence of a difference" in out["verdict_line"]


def test_single_seed_gives_no_paired_test():
    gt, preds = _preds()
    one = {k: v for k, v in preds.items() if k[1] == 0}
    out = compare(_cells(gt, one), gt, "hybridsn")["hybridsn_se"]
    assert out["test"]["p_value"] is None and out["verdict"] == "no evidence"
    assert "at least 2 seeds" in out["verdict_line"]


def test_folds_are_pooled_and_compared_with_the_corrected_test():
    """Two folds that each test half the pixels: pooled OA covers every pixel once, and the
    verdict comes from the corrected resampled t-test over (fold, seed) cells."""
    gt, preds = _preds()
    halves = [np.arange(gt.size) < 50, np.arange(gt.size) >= 50]
    cells = [c for k, h in enumerate(halves) for c in _cells(gt, preds, fold=k, test=h)]
    pooled = pool(cells)
    pred, test = pooled[("hybridsn_se", 0)]
    assert test.all() and np.array_equal(pred, gt)
    out = compare(cells, gt, "hybridsn")["hybridsn_se"]
    assert out["method"] == "corrected resampled t-test" and out["folds"] == 2
    with pytest.raises(ValueError, match="overlap"):
        pool(cells + _cells(gt, preds, fold=2, test=halves[0]))


def test_bootstrap_runs_cover_every_run_with_patch_wide_blocks():
    gt, preds = _preds()
    labels = np.resize(gt, (10, 10))
    out = bootstrap_runs(pool(_cells(gt, preds, shape=(10, 10))), labels, 4, block=5)
    assert set(out) == {f"{m}-seed{s}" for m, s in preds}
    for b in out.values():
        assert b["block"] == 5 and b["blocks"] == 4
        assert b["oa"]["low"] <= b["oa"]["estimate"] <= b["oa"]["high"]
    exact = float((np.resize(preds[("hybridsn_se", 0)], (10, 10)) == labels).mean())
    assert out["hybridsn_se-seed0"]["oa"]["estimate"] == pytest.approx(exact)


def test_summary_names_protocol_unscored_classes_and_pixel_independence():
    gt, preds = _preds()
    labels = np.resize(gt, (10, 10))
    leak = {
        g: {"train_to_test_share": 0.0, "train_to_val_share": 0.0} for g in ("centre", "window")
    }
    info = {
        "dataset": "indian_pines",
        "protocol": "leakfree",
        "split": {
            "mode": "disjoint",
            "guard": "window",
            "leakage_share": 0.0,
            "leakage": leak,
            "train_pool": 100,
            "test": 100,
            "not_scored_note": "not scored: 1 (Alfalfa) (no training or no test pixels)",
        },
        "pca": {"components": 30, "fit_on": "train", "whiten": False},
        "training": {"epochs": 100, "early_stopping": 10, "batching": "auto"},
    }
    summary = summarize(
        _cells(gt, preds, shape=(10, 10)), labels, ["a", "b", "c", "d"],
        baselines=["hybridsn"], block=5, info=info,
    )  # fmt: skip
    md = summary_markdown(summary)
    assert md.startswith("# indian_pines, protocol `leakfree`")
    assert "**Not scored: 1 (Alfalfa)" in md
    assert "assumes independent pixels" in md
    assert "at most 100 epochs, early stopping after 10 epochs" in md
    assert "| 27.0 ± 1.0 |" in md
    assert "`hybridsn_se`: better than `hybridsn`" in md
    assert "block-bootstrap 95% CI" in md and "| `hybridsn-seed0` | 4 |" in md
