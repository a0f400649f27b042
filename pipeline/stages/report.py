"""Stage `report`: every model × seed compared against `hybridsn`, with the statistics that say
whether a difference is real (pipeline/evaluation/statistics.py), under the protocol's name."""

from __future__ import annotations

import json
import logging

import numpy as np

from pipeline.evaluation.figures import class_palette, label_to_rgb, save_map_panel
from pipeline.evaluation.metrics import mcnemar, mean_std
from pipeline.evaluation.statistics import ALPHA, block_bootstrap, holm, paired_t, verdict
from pipeline.io import write_json, write_text
from pipeline.params import flatten
from pipeline.provenance import check_recorded
from pipeline.stages.common import load_prepared, prediction_path, report_dir, run_name
from pipeline.tracking import start_run

log = logging.getLogger(__name__)


def _pm(stat: dict, scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def bootstrap_runs(
    preds: dict[tuple[str, int], np.ndarray],
    labels: np.ndarray,
    test: np.ndarray,
    n_classes: int,
    block: int,
) -> dict[str, dict]:
    """Spatial block-bootstrap 95 % CI of OA and kappa for every run, keyed by run name."""
    rows, cols = np.nonzero(test)
    y_true = labels[rows, cols] - 1
    out = {}
    for (m, s), pred in sorted(preds.items()):
        out[run_name(m, s)] = block_bootstrap(
            y_true, pred[rows, cols] - 1, rows, cols, n_classes, block, seed=s
        )
    return out


def compare(
    preds: dict[tuple[str, int], np.ndarray], gt_test: np.ndarray, test: np.ndarray, baseline: str
) -> dict[str, dict]:
    """Each variant against ``baseline`` on the test pixels.

    Per variant: the paired t-test across seeds on OA (the verdict), and McNemar per seed with
    Holm's correction across the variants of that seed (assumes independent pixels).
    """
    models = sorted({m for m, _ in preds} - {baseline})
    seeds = sorted({s for _, s in preds})
    oa = {k: float((v[test] == gt_test).mean()) for k, v in preds.items()}
    out: dict[str, dict] = {}
    for m in models:
        paired = [s for s in seeds if (m, s) in preds and (baseline, s) in preds]
        if not paired:
            continue
        per_seed = []
        for s in paired:
            ok_base = preds[(baseline, s)][test] == gt_test
            ok_model = preds[(m, s)][test] == gt_test
            res = mcnemar(ok_base, ok_model)
            res["seed"] = s
            res["oa_difference"] = oa[(m, s)] - oa[(baseline, s)]
            per_seed.append(res)
        test_t = paired_t([oa[(baseline, s)] for s in paired], [oa[(m, s)] for s in paired])
        out[m] = {
            "seeds": paired,
            "oa_difference": mean_std([r["oa_difference"] for r in per_seed]),
            "paired_t": test_t,
            "verdict": verdict(test_t),
            "mcnemar": per_seed,
        }
    for s in seeds:
        entries = [r for t in out.values() for r in t["mcnemar"] if r["seed"] == s]
        for r, adj in zip(entries, holm([r["p_value"] for r in entries]), strict=True):
            r["p_holm"] = adj
    for m, t in out.items():
        t["verdict_line"] = verdict_line(m, baseline, t)
    return out


def verdict_line(model: str, baseline: str, t: dict) -> str:
    """One sentence: better / worse / no evidence, with the numbers behind it."""
    pt, d = t["paired_t"], t["oa_difference"]
    why = f"paired t-test p = {pt['p_value']:.3g}" if pt["p_value"] is not None else pt["reason"]
    word = {
        "better": f"better than `{baseline}`",
        "worse": f"worse than `{baseline}`",
        "no evidence": f"no evidence of a difference from `{baseline}`",
    }[t["verdict"]]
    return (
        f"`{model}`: {word} at α = {ALPHA} (ΔOA {100 * d['mean']:+.2f} ± {100 * d['std']:.2f} pp "
        f"over {d['n']} seed(s); {why})"
    )


def run(params: dict) -> dict:
    data = load_prepared(params)
    models, seeds = params["train"]["models"], params["train"]["seeds"]
    baseline = "hybridsn" if "hybridsn" in models else models[0]
    rows, preds, run_ids = {}, {}, []
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
            run_ids.append(train.get("mlflow_run_id"))
            preds[(m, s)] = np.load(prediction_path(params, m, s))
            kept = ("n_params", "train_time_s", "best_epoch", "epochs_run", "batching")
            runs.append({**metrics, **{k: train[k] for k in kept}})
        rows[m] = {
            "n_params": runs[0]["n_params"],
            **{k: mean_std([r[k] for r in runs]) for k in ("oa", "aa", "kappa")},
            "train_time_s": mean_std([r["train_time_s"] for r in runs]),
            "epochs_run": mean_std([r["epochs_run"] for r in runs]),
            "best_epoch": mean_std([r["best_epoch"] for r in runs]),
            "batching": sorted({r["batching"] for r in runs}),
            "scene_inference_s": mean_std([r["scene_inference_s"] for r in runs]),
            "runs": {run_name(m, s): r for s, r in zip(seeds, runs, strict=True)},
        }
    gt_test = data.labels[data.test]
    tests = compare(preds, gt_test, data.test, baseline)
    patch = params["patch"]["size"]
    intervals = bootstrap_runs(preds, data.labels, data.test, len(data.class_names), patch)
    split = json.loads((data.path / "split.json").read_text())
    protocol = data.meta.get("protocol", params["protocol"])
    summary = {
        "dataset": data.meta["dataset"],
        "protocol": protocol,
        "split": {
            "mode": split.get("mode", params["split"]["mode"]),
            "guard": split.get("guard"),
            "leakage_share": split["leakage_share"],
            "leakage": split.get("leakage"),
            "train_pool": split["counts"]["train_pool"],
            "test": split["counts"]["test"],
            "not_scored": split.get("not_scored", []),
            "not_scored_note": split.get("not_scored_note", ""),
        },
        "pca": params["pca"],
        "training": {k: params["train"][k] for k in ("epochs", "early_stopping", "batching")},
        "seeds": seeds,
        "baseline": baseline,
        "alpha": ALPHA,
        "models": rows,
        "bootstrap": intervals,
        "comparisons": tests,
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
        title=f"{data.meta['dataset']} ({protocol} protocol): whole-scene maps, seed {seed}",
    )
    tags = {"stage": "report", "protocol": protocol}
    with start_run(params, data.meta["dataset"], "report", tags) as mlrun:
        mlrun.adopt_children(run_ids)
        counts = {k: int(getattr(data, k).sum()) for k in ("train", "val", "test")}
        mlrun.log_prepared(data.meta, params, counts, context="evaluation")
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
        for m, t in tests.items():
            if t["paired_t"]["p_value"] is not None:
                mlrun.log_metrics({f"{m}.paired_t_p": t["paired_t"]["p_value"]})
        for name in ("summary.md", "summary.json", "variants_maps.png"):
            mlrun.log_artifact(out / name)
    log.info("report written to %s", out / "summary.md")
    return summary


def _ci(b: dict) -> str:
    return f"{100 * b['estimate']:.2f} [{100 * b['low']:.2f}, {100 * b['high']:.2f}]"


def summary_markdown(s: dict, params: dict) -> str:
    sp, tr = s["split"], s["training"]
    guard = f", `{sp['guard']}` guard" if sp.get("mode") == "disjoint" else ""
    leak = sp.get("leakage") or {}
    leak_text = f"{100 * sp['leakage_share']:.2f}% of test pixels lie inside some training patch"
    if leak:
        leak_text = (
            f"train→test leakage {100 * leak['centre']['train_to_test_share']:.2f}% (centre: test "
            f"pixel inside a training patch) / {100 * leak['window']['train_to_test_share']:.2f}% "
            f"(window: patches overlap); train→validation "
            f"{100 * leak['centre']['train_to_val_share']:.2f}% / "
            f"{100 * leak['window']['train_to_val_share']:.2f}%"
        )
    lines = [
        f"# {s['dataset']}, protocol `{s['protocol']}`: HybridSN variants compared",
        "",
        f"Protocol `{s['protocol']}`. Split `{sp['mode']}`{guard} (seed {params['split']['seed']}): "
        f"{sp['train_pool']} training-pool pixels, {sp['test']} test pixels; {leak_text}. "
        f"PCA: {params['pca']['components'] or 'dataset default'} components fitted on "
        f"`{params['pca']['fit_on']}` pixels, whiten={params['pca']['whiten']}.",
    ]
    if sp.get("not_scored_note"):
        lines.append(f"**{sp['not_scored_note'][0].upper()}{sp['not_scored_note'][1:]}.**")
    lines += [
        f"Training: at most {tr['epochs']} epochs, "
        + (
            f"early stopping after {tr['early_stopping']} epochs without a better validation OA"
            if tr["early_stopping"]
            else "no early stopping"
        )
        + f", batching `{tr['batching']}`; the checkpoint of the best validation OA is scored.",
        f"Seeds: {', '.join(map(str, s['seeds']))} (mean ± sample std over seeds).",
        "",
        "| model | parameters | OA (%) | AA (%) | kappa (%) | epochs run | best epoch "
        "| train time (s) | scene map (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in s["models"].items():
        lines.append(
            f"| `{m}` | {r['n_params']:,} | {_pm(r['oa'])} | {_pm(r['aa'])} | {_pm(r['kappa'])} | "
            f"{_pm(r['epochs_run'], 1, 1)} | {_pm(r['best_epoch'], 1, 1)} | "
            f"{_pm(r['train_time_s'], 1, 1)} | {_pm(r['scene_inference_s'], 1, 3)} |"
        )
    first = next(iter(s["bootstrap"].values()), None)
    lines += [
        "",
        f"## Verdicts against `{s['baseline']}` (paired t-test across seeds on OA, α = {s['alpha']})",
        "",
    ]
    lines += [f"- {t['verdict_line']}." for t in s["comparisons"].values()]
    lines += [
        "",
        "| model | seeds | ΔOA mean ± std (pp) | t | p | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for m, t in s["comparisons"].items():
        pt = t["paired_t"]
        tv = "–" if pt["t"] is None else f"{pt['t']:.2f}"
        pv = "–" if pt["p_value"] is None else f"{pt['p_value']:.3g}"
        lines.append(
            f"| `{m}` | {pt['n']} | {100 * pt['mean']:+.2f} ± {100 * pt['std']:.2f} | {tv} | "
            f"{pv} | {t['verdict']} |"
        )
    if first:
        lines += [
            "",
            f"## Per run: spatial block-bootstrap {100 * first['level']:.0f}% CI",
            "",
            f"Test pixels resampled in {first['block']}×{first['block']}-pixel blocks (at least a "
            f"patch wide; {first['resamples']} resamples), because neighbouring pixels share their "
            "input window and their errors.",
            "",
            "| run | blocks | OA (%) [95% CI] | kappa (%) [95% CI] |",
            "|---|---:|---:|---:|",
        ]
        for name, b in s["bootstrap"].items():
            lines.append(f"| `{name}` | {b['blocks']} | {_ci(b['oa'])} | {_ci(b['kappa'])} |")
    lines += [
        "",
        "## McNemar per seed (assumes independent pixels: p-values too small on spatially "
        "correlated maps)",
        "",
        f"b = pixels `{s['baseline']}` gets right and the variant wrong; c = the reverse. Exact "
        "binomial test when b + c < 25, else chi² with continuity correction; Holm-adjusted "
        "across the variants of each seed. Not used for the verdicts.",
        "",
        "| model | seed | ΔOA (pp) | b | c | p | p (Holm) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, t in s["comparisons"].items():
        for r in t["mcnemar"]:
            lines.append(
                f"| `{m}` | {r['seed']} | {100 * r['oa_difference']:+.2f} | {r['b']} | {r['c']} | "
                f"{r['p_value']:.3g} | {r['p_holm']:.3g} |"
            )
    lines += ["", "Maps of every variant side by side: `variants_maps.png`.", ""]
    return "\n".join(lines)


def main(params: dict, args) -> None:
    run(params)
