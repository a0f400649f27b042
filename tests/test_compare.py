"""`make compare`: the variants × seeds table built from `dvc exp show --json` fits 100 columns."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "compare", Path(__file__).resolve().parents[1] / "tools" / "compare.py"
)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def _rev(rev: str, name: str | None, protocol: str, runs: dict) -> dict:
    metrics = {}
    for (model, seed), (oa, seconds) in runs.items():
        d = f"reports/indian_pines/{model}-seed{seed}"
        metrics[f"{d}/metrics.json"] = {"data": {"oa": oa, "aa": oa - 0.01, "kappa": oa - 0.02}}
        metrics[f"{d}/train.json"] = {"data": {"train_time_s": seconds, "n_params": 5122176}}
    metrics["reports/indian_pines/denoise/metrics.json"] = {"data": {"sigma30": {"mpsnr": 27.0}}}
    metrics["reports/indian_pines/hybridsn_2d3d-seed0/metrics.json"] = {
        "error": {"type": "FileNotFoundError", "msg": "missing"}
    }
    params = {"protocol": protocol, "split": {"mode": "random"}, "pca": {"fit_on": "all"}}
    return {
        "rev": rev,
        "name": name,
        "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics},
    }


SHOW = [
    {
        **_rev("workspace", None, "paper", {("hybridsn", 0): (0.9943, 3700.0)}),
        "experiments": None,
    },
    {
        **_rev("6470f888aaaa", "main", "paper", {("hybridsn", 0): (0.9943, 3700.0)}),
        "experiments": [
            {
                "name": "leakfree-sweep-with-a-very-long-name",
                "revs": [
                    _rev(
                        "1234567abc",
                        "leakfree-sweep-with-a-very-long-name",
                        "leakfree",
                        {
                            ("hybridsn", 0): (0.71, 120.0),
                            ("hybridsn", 1): (0.69, 118.0),
                            ("hybridsn_se", 0): (0.73, 150.0),
                            ("hybridsn_se", 1): (0.70, 149.5),
                        },
                    )
                ],
            }
        ],
    },
]


def test_one_row_per_experiment_model_and_seed():
    rows = compare.rows(json.loads(json.dumps(SHOW)))
    keys = [(r["experiment"], r["model"], r["seed"]) for r in rows]
    assert keys == [
        ("workspace", "hybridsn", 0),
        ("main", "hybridsn", 0),
        *[
            ("leakfree-sweep-with-a-very-long-name", m, s)
            for m in ("hybridsn", "hybridsn_se")
            for s in (0, 1)
        ],
    ]
    se1 = rows[-1]
    assert se1["protocol"] == "leakfree" and se1["oa"] == 0.70 and se1["train_time_s"] == 149.5


def test_table_fits_100_columns_with_only_the_columns_that_matter():
    text = compare.render(compare.rows(SHOW))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0].split() == [
        "experiment",
        "model",
        "seed",
        "protocol",
        "OA",
        "%",
        "AA",
        "%",
        "kappa",
        "%",
        "train",
        "time",
    ]
    row = lines[-1].split()
    assert row[1:] == ["hybridsn_se", "1", "leakfree", "70.00", "69.00", "68.00", "150", "s"]
    assert "1h01m" in lines[2]  # 3700 s
    assert "…" in lines[-1]  # long experiment name cut, not wrapped


def test_protocol_without_a_protocol_param_names_split_and_pca():
    assert compare.protocol({"split": {"mode": "disjoint"}, "pca": {"fit_on": "train"}}) == (
        "disjoint, pca:train"
    )
