import numpy as np
import pytest

from pipeline.evaluation.statistics import holm
from pipeline.params import defaults
from pipeline.stages.report import bootstrap_runs, compare, summary_markdown


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


def test_mcnemar_per_seed_with_holm_and_paired_t_verdicts():
    gt, preds = _preds()
    test = np.ones(gt.shape, bool)
    out = compare(preds, gt[test], test, "hybridsn")
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
    assert se["paired_t"]["n"] == 3
    assert se["paired_t"]["p_value"] < 0.05 and se["verdict"] == "better"
    assert se["verdict_line"].startswith("`hybridsn_se`: better than `hybridsn` at α = 0.05")
    assert "pooled" not in str(out) and "b_sum" not in str(out)


def test_no_difference_is_no_evidence():
    gt = np.arange(40) % 4 + 1
    test = np.ones(gt.shape, bool)
    preds = {}
    for s in (0, 1, 2):
        a, b = gt.copy(), gt.copy()
        a[s], b[(s + 1) % 3 + 10 * (s == 1)] = 0, 0  # one error each, differences 0, 0, 0 or so
        preds[("hybridsn", s)], preds[("hybridsn_2d3d", s)] = a, b
    out = compare(preds, gt, test, "hybridsn")["hybridsn_2d3d"]
    (r, *_) = out["mcnemar"]
    assert (r["b"], r["c"]) == (1, 1) and r["exact"] and r["p_value"] == pytest.approx(1.0)
    assert out["verdict"] == "no evidence"
    assert "no evidence of a difference" in out["verdict_line"]


def test_single_seed_gives_no_paired_test():
    gt, preds = _preds()
    one = {k: v for k, v in preds.items() if k[1] == 0}
    out = compare(one, gt, np.ones(gt.shape, bool), "hybridsn")["hybridsn_se"]
    assert out["paired_t"]["p_value"] is None and out["verdict"] == "no evidence"
    assert "at least 2 seeds" in out["verdict_line"]


def test_bootstrap_runs_cover_every_run_with_patch_wide_blocks():
    gt, preds = _preds()
    labels = np.resize(gt, (10, 10))
    test = np.ones((10, 10), bool)
    scene = {k: np.resize(v, (10, 10)) for k, v in preds.items()}
    out = bootstrap_runs(scene, labels, test, 4, block=5)
    assert set(out) == {f"{m}-seed{s}" for m, s in preds}
    for b in out.values():
        assert b["block"] == 5 and b["blocks"] == 4
        assert b["oa"]["low"] <= b["oa"]["estimate"] <= b["oa"]["high"]
    exact = float((scene[("hybridsn_se", 0)] == labels).mean())
    assert out["hybridsn_se-seed0"]["oa"]["estimate"] == pytest.approx(exact)


def test_summary_names_protocol_unscored_classes_and_pixel_independence():
    gt, preds = _preds()
    test = np.ones(gt.shape, bool)
    labels = np.resize(gt, (10, 10))
    scene = {k: np.resize(v, (10, 10)) for k, v in preds.items()}
    leak = {
        g: {
            "train_to_test_share": 0.0,
            "train_to_val_share": 0.0,
        }
        for g in ("centre", "window")
    }
    stat = {"mean": 0.9, "std": 0.01, "n": 3}
    summary = {
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
        "training": {"epochs": 100, "early_stopping": 10, "batching": "auto"},
        "seeds": [0, 1, 2],
        "baseline": "hybridsn",
        "alpha": 0.05,
        "models": {
            "hybridsn": {
                "n_params": 10,
                "oa": stat,
                "aa": stat,
                "kappa": stat,
                "train_time_s": stat,
                "scene_inference_s": stat,
                "epochs_run": {"mean": 27.0, "std": 1.0, "n": 3},
                "best_epoch": stat,
            }
        },
        "bootstrap": bootstrap_runs(scene, labels, np.ones((10, 10), bool), 4, block=5),
        "comparisons": compare(preds, gt[test], test, "hybridsn"),
    }
    md = summary_markdown(summary, defaults())
    assert md.startswith("# indian_pines, protocol `leakfree`")
    assert "**Not scored: 1 (Alfalfa)" in md
    assert "assumes independent pixels" in md
    assert "at most 100 epochs, early stopping after 10 epochs" in md
    assert "| 27.0 ± 1.0 |" in md
    assert "`hybridsn_se`: better than `hybridsn`" in md
    assert "block-bootstrap 95% CI" in md and "| `hybridsn-seed0` | 4 |" in md
