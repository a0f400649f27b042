"""The one place that talks to MLflow.

Default store: ``sqlite:///mlflow.db`` in the working directory (the repo root under
``dvc repro``), so a plain ``mlflow ui`` there lists the runs. ``tracking.uri`` in params wins,
then ``$MLFLOW_TRACKING_URI``. With ``tracking.enabled: false`` every call is a no-op, and the
core (data, models, training) never imports this module.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(params: dict) -> str:
    return params["tracking"]["uri"] or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Run:
    """An MLflow run, or a no-op stand-in when tracking is off."""

    def __init__(self, mlflow=None):
        self._mlflow = mlflow

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def log_params(self, params: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow:
            clean = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow and Path(path).exists():
            self._mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


class start_run:  # noqa: N801 - used as a context manager like mlflow.start_run
    """``with start_run(params, experiment, run_name, tags) as run:`` logs to MLflow if enabled."""

    def __init__(
        self,
        params: dict,
        experiment: str,
        run_name: str,
        tags: dict | None = None,
        *,
        resume: bool = False,
    ):
        self.params, self.experiment, self.run_name = params, experiment, run_name
        self.tags = dict(tags or {})
        self.resume = resume
        self._ctx = None

    def __enter__(self) -> Run:
        if not self.params["tracking"]["enabled"]:
            return Run(None)
        import mlflow

        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(resolve_uri(self.params))
        mlflow.set_experiment(self.experiment)
        self.tags.setdefault("git_commit", git_commit())
        tags = {k: str(v) for k, v in self.tags.items()}
        previous = self._latest_run_id(mlflow) if self.resume else None
        if previous:
            self._ctx = mlflow.start_run(run_id=previous)
            mlflow.set_tags(
                {f"{self.tags.get('stage', 'resumed')}.{k}": v for k, v in tags.items()}
            )
        else:
            self._ctx = mlflow.start_run(run_name=self.run_name, tags=tags)
        self._ctx.__enter__()
        log.info(
            "MLflow run %s in experiment %s (%s)",
            self.run_name,
            self.experiment,
            mlflow.get_tracking_uri(),
        )
        return Run(mlflow)

    def _latest_run_id(self, mlflow) -> str | None:
        """The newest run of this name, so later stages add to the run that trained the model."""
        runs = mlflow.search_runs(
            experiment_names=[self.experiment],
            filter_string=f"tags.mlflow.runName = '{self.run_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        return runs[0].info.run_id if runs else None

    def __exit__(self, *exc) -> bool:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False
