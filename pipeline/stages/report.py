"""Stage `report`: every model × seed compared against the baselines (``train.baseline`` and,
when trained, ``svm``), with the statistics that say whether a difference is real
(:mod:`pipeline.evaluation.comparison`), under the protocol's name."""

from __future__ import annotations

import json
import logging

from pipeline.evaluation.comparison import summarize, summary_markdown
from pipeline.runs import comparison_info, evaluated_cell, read_history, save_comparison
from pipeline.stages.common import load_prepared, report_dir, run_files
from pipeline.tracking import check_store, recorded_run_id, start_run

log = logging.getLogger(__name__)

CLASSICAL_BASELINE = "svm"


def run(params) -> dict:
    data = load_prepared(params)
    fold = data.meta.get("split", {}).get("fold") or 0
    cells, run_ids, histories, confusions = [], [], {}, []
    for m in params.train.models:
        for s in params.train.seeds:
            files = run_files(params, m, s)
            fix = f"hsi evaluate --model {m} --seed {s}"
            cells.append(evaluated_cell(files, data, m, s, fold, fix))
            run_ids.append(recorded_run_id(files.train_json))
            histories[files.name] = read_history(files.report / "history.csv")
            confusions.append(files.report / "confusion.png")
    split = json.loads((data.path / "split.json").read_text())
    protocol = data.meta.get("protocol", params.protocol)
    summary = summarize(
        cells,
        data.labels,
        data.class_names,
        baselines=[params.train.baseline, CLASSICAL_BASELINE],
        block=params.patch.size,
        info=comparison_info(params, split, protocol),
    )
    out = report_dir(params)
    markdown = summary_markdown(summary)
    written = save_comparison(out, summary, markdown, cells, data, histories)
    tags = {"stage": "report", "protocol": protocol}
    with start_run(params, data.meta["dataset"], "report", tags) as mlrun:
        mlrun.link_runs(run_ids, role="report")
        mlrun.set_note(markdown)
        counts = {k: int(data.split[k].sum()) for k in ("train", "val", "test")}
        mlrun.log_prepared(data.meta, params, counts, context="evaluation")
        for path in written:
            mlrun.log_artifact(path)
        for path in confusions:
            mlrun.log_artifact(path, f"confusion/{path.parent.name}")
    log.info("report written to %s", out / "summary.md")
    return summary


def main(params, args) -> None:
    check_store(params)  # an unusable MLflow store fails here, before any work
    run(params)
