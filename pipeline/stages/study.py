"""Stage `study`: the models × seeds × folds grid of ``study:``, fanned out over Ray (an embedded
local Ray by default, a cluster with ``study.address``) or run serially.

Each cell takes one path, the one `train` and `evaluate` take: the fold's prepared data (made
once here by :func:`prepare_scene` and shipped to the workers through Ray's object store), then
:func:`train_model`, the checkpoint as `train` writes it, and :func:`evaluate_classifier` on
that checkpoint. A worker returns the checkpoint's bytes, history, scene map and scores; this
process writes every file, atomically, as the stages do, under
``reports/<dataset>/study/<protocol>/`` (checkpoints under ``models/<dataset>/study/``). Then the
comparison `report` makes, over the whole grid. A cell whose files are complete and were made
from the same data and parameters is not run again.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from pipeline import distributed
from pipeline.data.fetching import load_raw
from pipeline.data.prepared import prepare_scene
from pipeline.errors import CellsError, DataError, ParamsError
from pipeline.evaluation.classification import evaluate_classifier
from pipeline.evaluation.comparison import summarize, summary_markdown
from pipeline.models import spec
from pipeline.naming import run_name
from pipeline.params import validate
from pipeline.provenance import fingerprint
from pipeline.runs import (
    comparison_info,
    evaluated_cell,
    read_history,
    resume_fingerprint,
    save_comparison,
    train_params,
    train_run,
    write_evaluation,
    write_training,
)
from pipeline.stages.common import cell_files, epoch_logger, raw_dir, study_dir
from pipeline.tracking import check_store, recorded_run_id, resolve_uri, start_run
from pipeline.training.checkpoint import StateBlob, load_checkpoint, load_model
from pipeline.training.common import device_name, resolve_device

log = logging.getLogger(__name__)


def run(params) -> dict:
    p, protocol = _study_params(params)
    sp = p.study
    cube, gt, manifest = load_raw(raw_dir(p), p.dataset.crop)
    folds = list(sp.folds or range(p.split.folds)) if p.split.mode == "kfold" else [0]
    fold_arg = (lambda k: k) if p.split.mode == "kfold" else (lambda k: None)
    data = {
        k: prepare_scene(cube, gt, manifest, p, where=raw_dir(p), fold=fold_arg(k)) for k in folds
    }
    grid = [(m, s, k) for m in sp.models for s in sp.seeds for k in folds]
    todo = [c for c in grid if not _finished(p, protocol, data, *c)]
    log.info("study %s: %d cells, %d to run (%d finished)", protocol, len(grid), len(todo),
             len(grid) - len(todo))  # fmt: skip
    tags = {"stage": "study", "protocol": protocol, "cells": len(grid)}
    with start_run(p, manifest["dataset"], f"study-{protocol}", tags) as parent:
        with distributed.session(sp.engine, sp.address) as cluster:
            _check_tracking(p, cluster)
            _run_cells(p, protocol, data, todo, parent)
        cells = [
            evaluated_cell(cell_files(p, protocol, m, s, k), data[k], m, s, k, "hsi study")
            for m, s, k in grid
        ]
        histories = {
            run_name(m, s, k): read_history(cell_files(p, protocol, m, s, k).report / "history.csv")
            for m, s, k in grid
        }
        first = data[folds[0]]
        split = {
            **first.summary,
            "counts": _mean_counts([d.summary["counts"] for d in data.values()]),
        }
        summary = summarize(
            cells, first.labels, first.class_names,
            baselines=[p.train.baseline, "svm"], block=p.patch.size,
            info=comparison_info(p, split, protocol),
        )  # fmt: skip
        summary["cells"] = len(grid)
        out = study_dir(p, protocol)
        markdown = summary_markdown(summary)
        for path in save_comparison(out, summary, markdown, cells, first, histories):
            parent.log_artifact(path)
        parent.link_runs(
            [recorded_run_id(cell_files(p, protocol, *c).train_json) for c in grid], role="study"
        )
        parent.set_note(markdown)
    log.info("study written to %s", out / "summary.md")
    return summary


def _run_cells(p, protocol: str, data: dict, todo: list, parent) -> None:
    """Run the cells still to do; each finished cell's files are written as it arrives. Cells cut
    off by Ctrl-C or a failure end their MLflow runs KILLED or FAILED, also a cell whose run
    finished on its worker but whose result was cut off on its way to be written."""
    sp = p.study
    written: list[str] = []

    def write(key, result, info):
        _write(p, protocol, data, result, info)
        written.append(result["train"]["mlflow_run_id"])

    try:
        distributed.run_cells(
            _cell,
            [(run_name(*c), {"model": c[0], "seed": c[1], "fold": c[2]}) for c in todo],
            engine=sp.engine, address=sp.address, cpus_per_cell=sp.cpus_per_cell,
            gpus_per_cell=sp.gpus_per_cell, max_retries=sp.max_retries,
            shared={"data": data, "params": p.to_dict(), "parent": parent.run_id},
            on_result=write,
        )  # fmt: skip
    except KeyboardInterrupt:
        parent.end_linked("study", "KILLED", keep=written)
        raise
    except distributed.CellsFailed as e:
        parent.end_linked("study", "FAILED", keep=written)
        for line in str(e).splitlines()[1:]:
            log.error("cell %s", line.strip())
        key, err = next(iter(e.errors.items()))
        first = (str(err).strip().splitlines() or [""])[-1]
        raise CellsError(
            f"{len(e.errors)} of {len(todo)} cells failed (first: {key}: {type(err).__name__}: "
            f"{first}); the {len(e.results)} finished are kept, and `hsi study` again runs only "
            "the others"
        ) from None


def _mean_counts(counts: list[dict]) -> dict:
    """Pixel counts per set, averaged over the folds (what one fold's run trains and tests)."""
    return {k: round(sum(c[k] for c in counts) / len(counts)) for k in counts[0]}


def _study_params(params):
    """The params the study runs with: ``study.protocol`` (when set) replaces the protocol."""
    protocol = params.study.protocol or params.protocol
    if protocol == params.protocol:
        return params, protocol
    return params.with_protocol(protocol, where="study.protocol"), protocol


def _check_tracking(p, cluster) -> None:
    """Workers on other nodes cannot write a local SQLite file or folder: ask for a server."""
    uri = resolve_uri(p)
    if p.tracking.enabled and cluster.nodes > 1 and not uri.startswith(("http://", "https://")):
        raise ParamsError(
            f"'tracking.uri' = {uri!r} is a local store, but the Ray cluster has {cluster.nodes} "
            "nodes whose workers log there; start an MLflow server on the head (`mlflow server "
            "--host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db`) and set "
            "tracking.uri: http://<head>:5000, or set tracking.enabled: false"
        )


def _finished(p, protocol: str, data: dict, model: str, seed: int, fold: int) -> bool:
    """Whether the cell's files are complete and made from these data and parameters."""
    files = cell_files(p, protocol, model, seed, fold)
    try:
        evaluated_cell(files, data[fold], model, seed, fold, "hsi study")
        recorded = json.loads(files.train_json.read_text()).get("params_fingerprint")
    except (DataError, OSError, ValueError):
        return False
    return recorded == fingerprint(train_params(p, model, seed))


def _cell(payload: dict, shared: dict, ctx) -> dict:
    """One cell on a worker: train, write the checkpoint to bytes, evaluate that checkpoint."""
    p = validate(shared["params"], "study")
    model_name, seed, fold = payload["model"], payload["seed"], payload["fold"]
    data = shared["data"][fold]
    device = resolve_device(p.compute.device)
    name = run_name(model_name, seed, fold)
    store = StateBlob(
        lambda: ctx.state.get("train"),
        lambda blob: ctx.state.put("train", blob),
        resume_fingerprint(p, model_name, seed, data),
    )
    tags = {"stage": "study", "model": model_name, "seed": seed, "fold": fold,
            "protocol": p.protocol, "node": ctx.node.hostname, "node_ip": ctx.node.ip,
            "node_id": ctx.node.node_id}  # fmt: skip
    if shared["parent"]:
        tags["hsi.study_run_id"] = shared["parent"]
    run_id = ctx.state.get("mlflow_run_id")
    with start_run(p, data.meta["dataset"], name, tags, run_id=run_id) as mlrun:
        ctx.state.put("mlflow_run_id", mlrun.run_id)
        _, ckpt, summary, history = train_run(
            spec(model_name, "classification"), data, p, seed, device=device, store=store,
            mlrun=mlrun, on_epoch=epoch_logger(mlrun), progress=False,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="hsi-cell-") as tmp:
            path = Path(tmp) / f"{name}.pt"
            path.write_bytes(ckpt)
            saved = load_checkpoint(path)
            ev = evaluate_classifier(
                load_model(saved, device),
                data,
                saved["patch"],
                p.inference,
                device,
                features=saved["meta"].get("features", "pca"),
            )
        mlrun.log_metrics({f"test_{k}": v for k, v in ev.metrics.items()})
    return {
        "checkpoint": ckpt,
        "train": summary,
        "history": history,
        "evaluation": ev,
        "device": device_name(device),
        "summary": f"test OA {100 * ev.report['oa']:.2f}%",
    }


def _write(p, protocol: str, data: dict, result: dict, info) -> None:
    """A finished cell's files, written here as `train` and `evaluate` write theirs."""
    s = result["train"]
    fold = s["fold"] or 0
    files = cell_files(p, protocol, s["model"], s["seed"], fold)
    summary = {**s, "node": info.node.hostname, "node_ip": info.node.ip,
               "node_id": info.node.node_id, "attempts": info.attempt}  # fmt: skip
    written = write_training(files, result["checkpoint"], summary, result["history"])
    write_evaluation(files, data[fold], result["evaluation"],
                     checkpoint_sha256=written["checkpoint_sha256"], device=result["device"])  # fmt: skip


def main(params, args) -> None:
    check_store(params)  # an unusable MLflow store fails here, before any work
    run(params)
