"""Stage `report`: every model × seed compared — mean ± std, McNemar against `hybridsn`, maps."""

from __future__ import annotations

import json
import logging

import numpy as np

from pipeline.evaluation.figures import class_palette, label_to_rgb, save_map_panel
from pipeline.evaluation.metrics import mcnemar, mean_std
from pipeline.io import write_json, write_text
from pipeline.params import flatten
from pipeline.provenance import check_recorded
from pipeline.stages.common import load_prepared, prediction_path, report_dir, run_name
from pipeline.tracking import start_run

log = logging.getLogger(__name__)

ALPHA = 0.05


def _pm(stat: dict, scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def compare(
    preds: dict[tuple[str, int], np.ndarray], gt_test: np.ndarray, test: np.ndarray, baseline: str
) -> dict[str, dict]:
    """McNemar on the test pixels between each model and the baseline, per seed and pooled."""
    models = sorted({m for m, _ in preds} - {baseline})
    seeds = sorted({s for _, s in preds})
    out = {}
    for m in models:
        per_seed, b_sum, c_sum = [], 0, 0
        for s in seeds:
            if (m, s) not in preds or (baseline, s) not in preds:
                continue
            ok_base = preds[(baseline, s)][test] == gt_test
            ok_model = preds[(m, s)][test] == gt_test
            res = mcnemar(ok_base, ok_model)
            res["seed"] = s
            res["oa_difference"] = float(ok_model.mean() - ok_base.mean())
            per_seed.append(res)
            b_sum, c_sum = b_sum + res["b"], c_sum + res["c"]
        if not per_seed:
            continue
        diffs = [r["oa_difference"] for r in per_seed]
        significant = [r for r in per_seed if r["p_value"] < ALPHA]
        same_sign = all(np.sign(r["oa_difference"]) == np.sign(diffs[0]) for r in significant)
        if len(significant) == len(per_seed) and same_sign and diffs[0] != 0:
            verdict = "better" if diffs[0] > 0 else "worse"
            verdict = f"{verdict} than {baseline} on every seed (McNemar p < {ALPHA})"
        elif not significant:
            verdict = f"no significant difference from {baseline} on any seed (seed noise)"
        else:
            verdict = (
                f"significant on {len(significant)} of {len(per_seed)} seeds only: inconclusive"
            )
        out[m] = {
            "per_seed": per_seed,
            "oa_difference": mean_std(diffs),
            "seeds_significant": len(significant),
            "verdict": verdict,
        }
    return out


def run(params: dict) -> dict:
    data = load_prepared(params)
    models, seeds = params["train"]["models"], params["train"]["seeds"]
    baseline = "hybridsn" if "hybridsn" in models else models[0]
    rows, preds = {}, {}
    for m in models:
        runs = []
        for s in seeds:
            d = report_dir(params, m, s)
            check_recorded(
                d / "classification_report.json",
                data.meta.get("fingerprint"),
                against=str(data.path),
                fix=f"hsi evaluate --model {m} --seed {s}",
            )
            metrics = json.loads((d / "metrics.json").read_text())
            train = json.loads((d / "train.json").read_text())
            preds[(m, s)] = np.load(prediction_path(params, m, s))
            runs.append(
                {**metrics, **{k: train[k] for k in ("n_params", "train_time_s", "best_epoch")}}
            )
        rows[m] = {
            "n_params": runs[0]["n_params"],
            **{k: mean_std([r[k] for r in runs]) for k in ("oa", "aa", "kappa")},
            "train_time_s": mean_std([r["train_time_s"] for r in runs]),
            "scene_inference_s": mean_std([r["scene_inference_s"] for r in runs]),
            "runs": {run_name(m, s): r for s, r in zip(seeds, runs, strict=True)},
        }
    gt_test = data.labels[data.test]
    tests = compare(preds, gt_test, data.test, baseline)
    split = json.loads((data.path / "split.json").read_text())
    summary = {
        "dataset": data.meta["dataset"],
        "split": {
            "mode": params["split"]["mode"],
            "leakage_share": split["leakage_share"],
            "train_pool": split["counts"]["train_pool"],
            "test": split["counts"]["test"],
        },
        "pca": params["pca"],
        "seeds": seeds,
        "baseline": baseline,
        "models": rows,
        "mcnemar": tests,
    }
    out = report_dir(params)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary, params))

    palette = class_palette(len(data.class_names), data.meta["palette"])
    seed = seeds[0]
    panels = [("ground truth", label_to_rgb(data.labels, palette))]
    panels += [
        (
            f"{m} (OA {100 * rows[m]['runs'][run_name(m, seed)]['oa']:.2f}%)",
            label_to_rgb(preds[(m, seed)], palette),
        )
        for m in models
    ]
    save_map_panel(
        out / "variants_maps.png",
        panels,
        data.class_names,
        palette,
        title=f"{data.meta['dataset']}: whole-scene maps, seed {seed}",
    )
    with start_run(params, data.meta["dataset"], "report", {"stage": "report"}) as mlrun:
        mlrun.log_params(
            {k: v for k, v in flatten(params).items() if k.startswith(("split.", "pca.", "train."))}
        )
        for m, r in rows.items():
            mlrun.log_metrics(
                {
                    f"{m}.oa_mean": r["oa"]["mean"],
                    f"{m}.oa_std": r["oa"]["std"],
                    f"{m}.aa_mean": r["aa"]["mean"],
                    f"{m}.kappa_mean": r["kappa"]["mean"],
                }
            )
        for name in ("summary.md", "summary.json", "variants_maps.png"):
            mlrun.log_artifact(out / name)
    log.info("report written to %s", out / "summary.md")
    return summary


def summary_markdown(s: dict, params: dict) -> str:
    sp = s["split"]
    lines = [
        f"# {s['dataset']}: HybridSN variants compared",
        "",
        f"Split `{sp['mode']}` (seed {params['split']['seed']}): {sp['train_pool']} training-pool "
        f"pixels, {sp['test']} test pixels; {100 * sp['leakage_share']:.2f}% of test pixels lie "
        f"inside some training patch. PCA: {params['pca']['components'] or 'dataset default'} "
        f"components fitted on `{params['pca']['fit_on']}` pixels, whiten={params['pca']['whiten']}.",
        f"Seeds: {', '.join(map(str, s['seeds']))} (mean ± sample std over seeds).",
        "",
        "| model | parameters | OA (%) | AA (%) | kappa (%) | train time (s) | scene map (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in s["models"].items():
        lines.append(
            f"| `{m}` | {r['n_params']:,} | {_pm(r['oa'])} | {_pm(r['aa'])} | {_pm(r['kappa'])} | "
            f"{_pm(r['train_time_s'], 1, 1)} | {_pm(r['scene_inference_s'], 1, 3)} |"
        )
    lines += [
        "",
        f"## Is it a real improvement? McNemar's test against `{s['baseline']}` on the test pixels",
        "",
        "b = pixels the baseline gets right and the variant wrong; c = the reverse. "
        "Exact binomial test when b + c < 25, else chi² with continuity correction.",
        "",
        "| model | seed | ΔOA (pp) | b | c | p-value |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, t in s["mcnemar"].items():
        for r in t["per_seed"]:
            lines.append(
                f"| `{m}` | {r['seed']} | {100 * r['oa_difference']:+.2f} | {r['b']} | {r['c']} | "
                f"{r['p_value']:.3g} |"
            )
    lines += ["", "Verdicts:", ""]
    lines += [f"- `{m}`: {t['verdict']}." for m, t in s["mcnemar"].items()]
    lines += ["", "Maps of every variant side by side: `variants_maps.png`.", ""]
    return "\n".join(lines)


def main(params: dict, args) -> None:
    run(params)
