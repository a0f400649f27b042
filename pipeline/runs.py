"""The files of a trained and evaluated classifier, and of a comparison of several.

The one way they are written, by the `train`, `evaluate` and `report` stages and by `study` for
each cell (a study's worker returns the checkpoint's bytes and the scores; the driver writes
them here), and read back for a comparison after checking the chain of fingerprints: each
metrics file records the prepared data, checkpoint and scene map it was made from. Every file is
written atomically; the caller says where (:class:`pipeline.stages.common.RunFiles`).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from pipeline.data.pca import PCA
from pipeline.data.prepared import Prepared
from pipeline.errors import DataError
from pipeline.evaluation.classification import Evaluation
from pipeline.evaluation.comparison import Cell
from pipeline.evaluation.figures import (
    CORRECT_COLOUR,
    ERROR_COLOUR,
    class_palette,
    error_map,
    false_colour,
    label_to_rgb,
    save_confusion_png,
    save_curve_png,
    save_interval_png,
    save_map,
    save_map_panel,
)
from pipeline.io import rows_csv, save_npy, sha256_file, write_bytes, write_json, write_text
from pipeline.models import count_parameters, spec
from pipeline.naming import run_name
from pipeline.params import flatten
from pipeline.provenance import check_recorded, check_same_file, fingerprint
from pipeline.training.checkpoint import checkpoint_bytes
from pipeline.training.classifier import train_model
from pipeline.training.common import device_name
from pipeline.training.loop import FitResult


def save_training_curves(path, history: list[dict], title: str) -> None:
    epochs = [r["epoch"] for r in history]
    nan = float("nan")
    series = {
        f"{split} {what}": [r.get(f"{split}_{what}", nan) for r in history]
        for what in ("oa", "loss")
        for split in ("train", "val")
    }
    save_curve_png(path, epochs, series, "epoch", "OA / loss", title=title)


def save_fit_curves(path, fit: dict, title: str) -> None:
    """A classical model's counterpart of the training curves: the SVM's inner-CV accuracy
    against γ for each C (the grid it chose from), the forest's out-of-bag accuracy against the
    number of trees."""
    if "cv_accuracy_grid" in fit:
        scale = fit["gamma_times_bands"] / fit["gamma"]
        x = [math.log10(g * scale) for g in fit["gamma_grid"]]
        series = {
            f"C = {c:g}": row for c, row in zip(fit["c_grid"], fit["cv_accuracy_grid"], strict=True)
        }
        save_curve_png(path, x, series, "log10(γ·K)", f"inner-CV OA ({fit['cv']})", title=title)
    elif "oob_accuracy" in fit:
        series = {"out-of-bag OA": fit["oob_accuracy"]}
        save_curve_png(path, fit["oob_trees"], series, "trees", "OA", title=title)
    else:
        raise ValueError(f"{title}: the fit records neither an inner-CV grid nor out-of-bag scores")


def train_params(params, model: str, seed: int) -> dict:
    """What a classifier's training depends on besides the data: its checkpoint records it, and
    a resume state is valid only for the same. A classical model depends on none of the loop's
    settings (a CNN recipe changes nothing about an SVM)."""
    if spec(model).family == "classical":
        return {"model": model, "seed": seed, "features": spec(model).features}
    tp = {
        k: v for k, v in params.train.to_dict().items() if k not in ("models", "seeds", "baseline")
    }
    return {
        **tp,
        "patch": params.patch.to_dict(),
        "amp": params.compute.amp,
        "model": model,
        "seed": seed,
    }


def resume_fingerprint(params, model: str, seed: int, data: Prepared) -> str:
    return fingerprint({"params": train_params(params, model, seed), "data": data.fingerprint})


def trained_record(
    model,
    result: FitResult,
    data: Prepared,
    params,
    name: str,
    seed: int,
    *,
    device: str,
    run_id: str | None,
    features: str = "pca",
) -> tuple[bytes, dict]:
    """The checkpoint's content and train.json's fields of one trained classifier."""
    patch = {
        "size": getattr(model, "patch_size", params.patch.size),
        "padding": params.patch.padding,
    }
    best = result.best_score
    fold = data.meta.get("split", {}).get("fold")
    pca = data.pca if features == "pca" else PCA.identity(data.spectra.shape[-1]).to_arrays()
    ckpt = checkpoint_bytes(
        state_dict=result.state_dict,
        model_config=model.config,
        pca=pca,
        patch=patch,
        class_names=data.class_names,
        meta={
            **{
                k: data.meta.get(k)
                for k in ("dataset", "cube_sha256", "raw_bands", "rgb_bands", "palette", "protocol")
            },
            "mlflow_run_id": run_id,
            "seed": seed,
            "fold": fold,
            "features": features,
            "best_epoch": result.best_epoch,
            "best_val_oa": best if best is not None else -1.0,
        },
        data_fingerprint=data.fingerprint,
        params=train_params(params, name, seed),
    )
    summary = {
        "model": name,
        "seed": seed,
        "fold": fold,
        "n_params": count_parameters(model),
        "device": device,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_oa": best,
        "selection": "best validation OA" if best is not None else "last epoch (no validation)",
        "stopped_early": result.stopped_early,
        "batching": result.batching,
        "resumed_from_epoch": result.resumed_from,
        "train_time_s": result.wall_time_s,
        "train_samples_per_s": result.samples_per_s,
        "train_pixels": int(data.train.sum()),
        "val_pixels": int(data.val.sum()),
        "mlflow_run_id": run_id,
        "data_fingerprint": data.fingerprint,
        "params_fingerprint": fingerprint(train_params(params, name, seed)),
    }
    if hasattr(model, "fit_info"):
        summary["fit"] = model.fit_info
    return ckpt, summary


def train_run(
    model_spec, data: Prepared, params, seed: int, *, device, store, mlrun, on_epoch=None,
    progress: bool = True,
) -> tuple[object, bytes, dict, list[dict]]:  # fmt: skip
    """Train one classifier, logging to ``mlrun``: the one path of the `train` stage and of every
    study cell. Returns the model, its checkpoint's bytes, train.json's fields and the history."""
    logged = {k: v for k, v in flatten(params).items() if not k.startswith(("denoise.", "study."))}
    split = data.meta.get("split", {})
    fold = split.get("fold") if split.get("mode") == "kfold" else None
    if fold is not None:  # a study cell's fold is the data's, not params' split.fold
        logged["split.fold"] = fold
    mlrun.log_params({**logged, "model": model_spec.name, "seed": seed})
    mlrun.log_prepared(
        data.meta, params, {k: int(data.split[k].sum()) for k in ("train", "val", "test")},
        fold=fold,
    )  # fmt: skip
    model, result = train_model(
        model_spec, data, params, seed, device=device, store=store, on_epoch=on_epoch,
        progress=progress,
    )  # fmt: skip
    ckpt, summary = trained_record(
        model, result, data, params, model_spec.name, seed, device=device_name(device),
        run_id=mlrun.run_id, features=model_spec.features,
    )  # fmt: skip
    keys = ("best_val_oa", "train_time_s", "best_epoch", "n_params")
    mlrun.log_metrics({k: summary[k] or 0.0 for k in keys})
    return model, ckpt, summary, result.history


def write_training(files, checkpoint: bytes, summary: dict, history: list[dict]) -> dict:
    """Checkpoint, history.csv, curves.png, then train.json recording the checkpoint's sha256
    (a checkpoint written by an interrupted run never pairs with an old train.json)."""
    write_bytes(files.checkpoint, checkpoint)
    write_text(files.report / "history.csv", rows_csv(history))
    if history:
        save_training_curves(files.report / "curves.png", history, files.name)
    else:
        save_fit_curves(files.report / "curves.png", summary["fit"], files.name)
    summary = {
        **summary,
        "checkpoint": str(files.checkpoint),
        "checkpoint_sha256": sha256_file(files.checkpoint),
    }
    write_json(files.train_json, summary)
    return summary


def confusion_csv(cm: np.ndarray, names: list[str]) -> str:
    buf = io.StringIO()
    buf.write("actual\\predicted," + ",".join(f'"{n}"' for n in names) + "\n")
    for name, row in zip(names, cm, strict=True):
        buf.write(f'"{name}",' + ",".join(map(str, row)) + "\n")
    return buf.getvalue()


def confusion_records(cm: np.ndarray, names: list[str]) -> list[dict]:
    """One record per test pixel: the input of `dvc plots`' confusion template."""
    return [
        {"actual": names[t], "predicted": names[p]}
        for t in range(len(names))
        for p in range(len(names))
        for _ in range(int(cm[t, p]))
    ]


def write_evaluation(
    files, data: Prepared, ev: Evaluation, *, checkpoint_sha256: str, device: str
) -> dict:
    """The scene map, confusion reports and maps, then metrics.json and
    classification_report.json (written last) recording the prepared data's fingerprint, the
    checkpoint's and the scene map's sha256."""
    names = data.class_names
    protocol = data.meta.get("protocol", "")
    title = f"{files.name} on {data.meta['dataset']} ({protocol} protocol)"
    out = files.report
    save_npy(files.prediction, ev.labels)
    write_text(out / "confusion.csv", confusion_csv(ev.cm, names))
    write_json(out / "confusion.json", confusion_records(ev.cm, names))
    save_confusion_png(out / "confusion.png", ev.cm, names, title=f"{title}: test pixels")
    palette = class_palette(len(names), data.meta["palette"])
    shown = ev.labels if data.view("test") is None else np.where(data.view("test"), ev.labels, 0)
    labelled = data.labels > 0
    panels = [
        ("false colour (PCA 1-3)", false_colour(data.cube[..., :3])),
        ("ground truth", label_to_rgb(data.labels, palette)),
        ("prediction, what the test input shows", label_to_rgb(shown, palette)),
        ("prediction, labelled pixels", label_to_rgb(np.where(labelled, shown, 0), palette)),
        ("errors (test pixels)", error_map(np.where(data.test, data.labels, 0), ev.labels)),
    ]
    save_map_panel(
        out / "maps.png",
        panels,
        names,
        palette,
        title=f"{title}: test OA {100 * ev.report['oa']:.2f}%",
        extra_legend={"correct": CORRECT_COLOUR, "error": ERROR_COLOUR},
    )
    save_map(out / "prediction.png", shown, names, title=title, palette=palette)
    provenance = {
        "data_fingerprint": data.fingerprint,
        "checkpoint": str(files.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "prediction_sha256": sha256_file(files.prediction),
    }
    metrics = {**ev.metrics, "provenance": provenance}
    write_json(out / "metrics.json", metrics)
    write_json(
        out / "classification_report.json",
        {
            **ev.report,
            "inference": {"method": ev.method, "seconds": ev.seconds, "device": device},
            "not_scored": data.meta.get("split", {}).get("not_scored_note"),
            "label_values": data.meta.get("label_values"),
            "provenance": provenance,
        },
    )
    return metrics


def evaluated_cell(files, data: Prepared, model: str, seed: int, fold: int, fix: str) -> Cell:
    """One evaluated run read back for a comparison, after checking the chain: its metrics were
    made from these prepared data, from the checkpoint now on disk (the one train.json names),
    and its scene map is the one they were scored on. Anything else is refused, naming ``fix``."""
    report = files.report / "classification_report.json"
    check_recorded(report, data.fingerprint, against=str(data.path or "the prepared data"), fix=fix)
    try:
        metrics = json.loads(files.metrics_json.read_text())
        train = json.loads(files.train_json.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"{getattr(e, 'filename', files.report)}: missing or unreadable; run `{fix}`"
        ) from None
    prov = metrics.get("provenance", {})
    for what, path, recorded in (
        ("checkpoint", files.checkpoint, prov.get("checkpoint_sha256")),
        ("scene map", files.prediction, prov.get("prediction_sha256")),
    ):
        actual = sha256_file(path) if path.is_file() else None
        check_same_file(
            str(files.metrics_json), recorded, actual, against=str(path), fix=fix, thing=what
        )
    check_same_file(
        str(files.metrics_json),
        prov.get("checkpoint_sha256"),
        train.get("checkpoint_sha256"),
        against=str(files.checkpoint),
        fix=fix,
        thing="checkpoint (per train.json)",
    )
    pred = np.load(files.prediction)
    kept = ("n_params", "train_time_s", "best_epoch", "epochs_run", "batching", "train_pixels")
    return Cell(
        model,
        seed,
        fold,
        pred,
        data.test.copy(),
        {k: v for k, v in metrics.items() if k != "provenance"},
        {k: train.get(k) for k in kept},
        data.view("test"),
    )


def comparison_info(params, split: dict, protocol: str) -> dict:
    """What a summary states besides the scores: dataset, protocol, split, PCA and training."""
    counts = split.get("counts", {})
    return {
        "dataset": split.get("dataset", params.dataset.name),
        "protocol": protocol,
        "split": {
            **{
                k: split.get(k)
                for k in (
                    "mode",
                    "seed",
                    "guard",
                    "folds",
                    "fold",
                    "block_size",
                    "context",
                    "leakage_share",
                    "leakage",
                    "not_scored",
                    "not_scored_note",
                )
            },
            "train_pool": counts.get("train_pool"),
            "test": counts.get("test"),
        },
        "pca": params.pca.to_dict(),
        "training": {
            k: params.train[k]
            for k in ("epochs", "early_stopping", "batching", "augment", "label_smoothing")
        },
    }


def save_comparison(
    out: Path, summary: dict, markdown: str, cells: list[Cell], data, histories: dict[str, list]
) -> list[Path]:
    """summary.{md,json}; variants_maps.png (each model's map, first seed: under k-fold each
    fold's map of its own blocks); oa_ci.png (pooled OA with its block-bootstrap 95 % CI per
    model and seed); val_oa.csv (validation OA per epoch of every run, for `dvc plots`)."""
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", markdown)
    names = data.class_names
    palette = class_palette(len(names), data.meta["palette"])
    seed = summary["seeds"][0]
    panels = [("ground truth", label_to_rgb(data.labels, palette))]
    for m, row in summary["models"].items():
        shown = np.zeros(data.labels.shape, np.int64)
        for c in cells:
            if (c.model, c.seed) == (m, seed):
                region = c.region if c.region is not None else np.ones_like(shown, bool)
                shown = np.where(region, c.pred, shown)
        oa = row["runs"][run_name(m, seed)]["oa"]
        panels.append((f"{m} (OA {100 * oa:.2f}%)", label_to_rgb(shown, palette)))
    what = "each fold's map of its own blocks" if len(summary["folds"]) > 1 else "scene maps"
    title = f"{summary['dataset']} ({summary['protocol']} protocol)"
    save_map_panel(
        out / "variants_maps.png", panels, names, palette, title=f"{title}: {what}, seed {seed}"
    )
    intervals = [
        (m, f"seed {s}", *(100 * b["oa"][k] for k in ("estimate", "low", "high")))
        for m in summary["models"]
        for s in summary["seeds"]
        if (b := summary["bootstrap"].get(run_name(m, s)))
    ]
    save_interval_png(out / "oa_ci.png", intervals, "OA (%), 95% block-bootstrap CI", title)
    curves = [
        {"run": name, "epoch": r["epoch"], "val_oa": r["val_oa"]}
        for name, history in histories.items()
        for r in history
        if r.get("val_oa") is not None
    ]
    write_text(out / "val_oa.csv", rows_csv(curves) if curves else "run,epoch,val_oa\n")
    return [out / f for f in ("summary.md", "summary.json", "variants_maps.png", "oa_ci.png",
                              "val_oa.csv")]  # fmt: skip


def read_history(path: Path) -> list[dict]:
    """A history.csv back as records with numbers (empty when there is none, as for svm/rf)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        return []
    keys = lines[0].split(",")
    return [
        {k: float(v) if v else None for k, v in zip(keys, line.split(","), strict=True)}
        for line in lines[1:]
    ]
