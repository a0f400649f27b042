"""The MLflow UI in headless Chromium shows the variants compared on first open: a store built
through pipeline.tracking (training runs, a classical baseline, a report that links them; a
denoising experiment with a baseline), checked by tools/mlflow_browser_check.py."""

import math
import shutil
import sys
from pathlib import Path

import pytest

from pipeline import tracking

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import mlflow_browser_check as check  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not any(shutil.which(b) for b in check.BROWSERS),
        reason="no Chromium (Debian: apt-get install -y chromium)",
    ),
]

DATASET = "tiny"
META = {"dataset": DATASET, "protocol": "paper", "fingerprint": "f" * 16, "cube_sha256": "c" * 64}
TRAINED = [("hybridsn", 0), ("hybridsn_se", 0), ("hybridsn", 1)]


def _params(uri: str) -> dict:
    return {"tracking": {"enabled": True, "uri": uri}}


def _classification(params: dict) -> list[str]:
    """Runs as train + evaluate + report log them; returns the training runs' names."""
    ids, names = [], []
    for i, (model, seed) in enumerate(TRAINED):
        name = f"{model}-seed{seed}"
        with tracking.start_run(params, DATASET, name, {"stage": "train"}) as run:
            run.log_params({"model": model, "seed": seed})
            run.log_prepared(META, params, {"train": 10, "val": 2, "test": 30})
            for epoch in range(4):
                run.log_metrics(
                    {"train_loss": 2 / (epoch + 1), "val_oa": 0.5 + 0.1 * epoch + 0.01 * i},
                    step=epoch,
                )
            run.log_metrics({"best_val_oa": 0.8 + 0.01 * i})
        tags = {"stage": "evaluate"}
        with tracking.start_run(params, DATASET, name, tags, run_id=run.run_id) as again:
            again.log_metrics({"test_oa": 0.9 + i / 100, "test_aa": 0.85, "test_kappa": 0.88})
        ids.append(run.run_id)
        names.append(name)
    with tracking.start_run(params, DATASET, "svm-seed0", {"stage": "baseline"}) as svm:
        svm.log_params({"model": "svm", "seed": 0})
        svm.log_prepared(META, params, {"train": 10, "val": 2, "test": 30})
        svm.log_metrics({"test_oa": 0.7, "test_aa": 0.6, "test_kappa": 0.65})
    names.append("svm-seed0")
    with tracking.start_run(params, DATASET, "report", {"stage": "report"}) as report:
        report.link_runs([*ids, svm.run_id, None], role="report")
    return names


def _denoising(params: dict) -> list[str]:
    scores = {
        "dncnn": {10: {"mpsnr": 38.0, "mssim": 0.95, "sam": 2.0}, 30: {"mpsnr": 33.0}},
        "gaussian": {10: {"mpsnr": 34.0, "mssim": 0.9, "sam": 3.0}, 30: {"mpsnr": math.nan}},
    }
    for name, by_sigma in scores.items():
        with tracking.start_run(params, DATASET, name, task="denoising") as run:
            run.log_params({"model": name})
            run.log_metrics(tracking.per_sigma(by_sigma))
    return list(scores)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    where = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    params = _params(uri)
    return uri, _classification(params), _denoising(params), where


def test_classification_runs_listed_and_charted_without_a_click(store):
    uri, runs, _, where = store
    shots = [where / "runs.png", where / "charts.png", where / "view.png"]
    argv = ["--store", uri, "--experiment", f"{DATASET}/classification"]
    argv += ["--screenshot", str(shots[0]), "--chart-screenshot", str(shots[1])]
    argv += ["--view-screenshot", str(shots[2])]
    assert check.main(argv) == 0
    assert all(p.stat().st_size > 10_000 for p in shots)


def test_named_runs_and_denoisers_per_sigma(store):
    uri, runs, denoisers, _ = store
    argv = ["--store", uri, "--experiment", f"{DATASET}/classification", "--runs", *runs[:2]]
    assert check.main(argv) == 0
    assert check.main(["--store", uri, "--experiment", f"{DATASET}/denoising"]) == 0


def test_nested_runs_fail_the_check(store, tmp_path, capsys):
    """The old layout (training runs nested under the report, collapsed) is what the check
    exists to catch."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = _params(uri)
    with tracking.start_run(params, DATASET, "hybridsn-seed0") as child:
        child.log_metrics({"test_oa": 0.9})
    with tracking.start_run(params, DATASET, "report") as report:
        pass
    MlflowClient(uri).set_tag(child.run_id, "mlflow.parentRunId", report.run_id)
    assert check.main(["--store", uri, "--experiment", f"{DATASET}/classification"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mlflow_browser")]
    assert len(err) == 1 and "hybridsn-seed0" in err[0] and "nested" in err[0]
