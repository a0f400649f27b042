"""The one place that talks to MLflow.

Layout: one experiment per dataset and task, ``<dataset>/classification`` and
``<dataset>/denoising``, so each experiment's chart view holds only metrics that belong together
(HybridSN's ``best_epoch`` never shares an axis with DnCNN's). A run is reopened by the id its
producing stage wrote (``train.json``'s ``mlflow_run_id``), never looked up by name.

Comparison: every training run stays a top-level run, so the runs table of a fresh browser lists
each one and the chart view draws one bar or curve per run (MLflow's UI collapses nested runs and
charts only the rows it shows). A ``report`` (or study) run is linked to the runs it compares by
tags (``Run.link_runs``), carries the comparison as artifacts and logs no metrics of its own; the
experiment gets a saved view whose link shows model, seed, protocol, fold and test scores as
columns (MLflow 3 keeps default columns per browser, never per experiment).

Store: ``tracking.uri`` in params, then ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in
the project root (inside a ``dvc exp run --queue`` workspace, ``.dvc/tmp/exps/<tmp>``, the root of
the repository that queued it, so queued runs land in the same store). A SQLite store is created
or upgraded by one process at a time under a file lock and switched to WAL. With
``tracking.enabled: false`` every call is a no-op; the core never imports this module.

Faults: ``check_store`` (also run by ``start_run``) fails in seconds, in one line, on a server
that is down or silent and on a corrupt SQLite file. Once a run has started, a store failure never
costs the stage its work: the first one is logged as a warning, later calls are no-ops, and
leaving the ``with start_run(...)`` block cleanly raises ``TrackingError`` after the stage's
outputs were written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import DataError, PipelineError

log = logging.getLogger(__name__)

# No usage reports to the MLflow vendor (and no network timeouts offline) unless asked for.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's own defaults (120 s per request, 7 retries with backoff) keep a stage waiting 15 min on
# a silent server; these bound one failing call to about 30 s. Values already set are kept.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}


def bound_http() -> None:
    """Apply ``HTTP_LIMITS`` to this process where not set (MLflow reads them per request)."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)


bound_http()

DB_NAME = "mlflow.db"
TASKS = ("classification", "denoising")
FLAVOR = "hsi_checkpoint"
"""The MLflow model flavor we write: a checkpoint loaded with ``torch.load(weights_only=True)``."""
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
"""Read by MLflow UIs before 3.x's GenAI/Model-training switch; 3.17 follows that switch."""
ROLE_TAG = "hsi.role"
"""``report``/``study`` on a run that compares others, ``baseline`` on a classical method's run."""
VIEW_ID = "hsi-compare"
"""The experiment's saved view (tag ``mlflow.sharedViewState.hsi-compare``) set by link_runs."""
VIEW_PARAMS = ("model", "method", "seed", "protocol", "fold", "sigma")
MAX_NOTE = 7900
"""A run description stays under MLflow's 8000-character limit of a tag value."""
PROBE_TIMEOUT_S = 5.0
SQLITE_CHECK_S = 5.0
_PREPARED: set[str] = set()
_CHECKED: set[str] = set()
OFF_HINT = "or run with tracking.enabled: false in params.yaml"


class TrackingError(PipelineError):
    """The MLflow store is unreachable, silent or corrupt, or failed during a run."""


def setting(params: Any, *path: str, default: Any = None) -> Any:
    """``params[a][b]`` of a nested dict or ``params.a.b`` of frozen dataclasses; ``default``
    where a level is missing or the value is None."""
    node = params
    for key in path:
        if node is None:
            return default
        node = node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)
    return default if node is None else node


def tracking_enabled(params: Any) -> bool:
    return bool(setting(params, "tracking", "enabled", default=True))


def project_root(cwd: str | os.PathLike | None = None) -> Path:
    """The working directory, or the repository that queued it when run in a DVC temp workspace."""
    here = Path(cwd or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def default_uri() -> str:
    return f"sqlite:///{project_root() / DB_NAME}"


def resolve_uri(params: Any) -> str:
    uri = setting(params, "tracking", "uri")
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def experiment_name(dataset: str, task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    return f"{dataset}/{task}"


def registered_name(model: str, dataset: str) -> str:
    """Stable registry name of a trained model, e.g. ``hybridsn-indian_pines``."""
    return f"{model}-{dataset}"


def recorded_run_id(path: str | os.PathLike) -> str | None:
    """The ``mlflow_run_id`` a stage wrote into its JSON output, or None."""
    try:
        return json.loads(Path(path).read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()


def one_line(e: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message, shortened: what a user reads in a CLI error."""
    text = str(getattr(e, "message", None) or e).strip() or type(e).__name__
    text = text.splitlines()[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_store(params: Any) -> str | None:
    """Fail fast, in one line, when the store cannot be used; call it before a stage does work.

    An http(s) server must answer within seconds (any HTTP status below 500 counts: access rights
    are MLflow's to report); a SQLite file must be a readable, uncorrupted database (a missing one
    is created later). Other stores (PostgreSQL, Databricks, ...) are left to MLflow. Returns the
    URI, or None with tracking off. A URI that passed is not checked again in this process.
    """
    if not tracking_enabled(params):
        return None
    bound_http()
    uri = resolve_uri(params)
    if uri in _CHECKED:
        return uri
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif (db := _sqlite_path(uri)) is not None:
        _check_sqlite(uri, db)
    _CHECKED.add(uri)
    return uri


def _check_server(uri: str) -> None:
    """Two tries of the experiments search, ``PROBE_TIMEOUT_S`` each: about 11 s at most."""
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    problem = ""
    for attempt in range(2):
        if attempt:
            time.sleep(1.0)
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S, context=_tls()):
                return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
            problem = f"answers HTTP {e.code} {e.reason}"
        except OSError as e:  # URLError, refused, reset, timed out
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                problem = f"accepts connections but does not answer within {PROBE_TIMEOUT_S:g} s"
            else:
                problem = f"cannot be reached ({reason})"
    raise TrackingError(
        f"MLflow server {uri} {problem}: start it, point tracking.uri or "
        f"$MLFLOW_TRACKING_URI at a server that answers, {OFF_HINT}"
    )


def _tls() -> ssl.SSLContext:
    """Certificate checks as MLflow's client makes them (its TLS environment variables)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))


def _check_sqlite(uri: str, db: Path) -> None:
    """A header that matches the file's size, then ``PRAGMA quick_check`` for at most a few
    seconds (a large store that is still being checked then is taken as sound)."""

    def bad(problem: str) -> TrackingError:
        return TrackingError(
            f"MLflow store {uri}: {problem}; move the file aside (and restore a backup if there "
            f"is one), point tracking.uri at another store, {OFF_HINT}"
        )

    if not db.exists():
        return
    if not db.is_file():
        raise bad("not a file")
    try:
        size = db.stat().st_size
        with open(db, "rb") as fh:
            head = fh.read(100)
    except OSError as e:
        raise bad(f"cannot be read ({one_line(e)})") from e
    if size == 0:
        return
    if not head.startswith(b"SQLite format 3\x00") or len(head) < 100:
        raise bad("not an SQLite database")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and size < pages * page_size:
        raise bad(f"truncated ({size} bytes, its header says {pages * page_size})")
    deadline = time.monotonic() + SQLITE_CHECK_S
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=SQLITE_CHECK_S)
        ) as con:
            con.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            rows = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError as e:
        if "interrupted" in str(e) or "locked" in str(e):
            return
        raise bad(f"cannot be opened ({one_line(e)})") from e
    except sqlite3.DatabaseError as e:
        raise bad(f"corrupt ({one_line(e)})") from e
    if rows != [("ok",)]:
        raise bad(f"corrupt (quick_check: {str(rows[0][0] if rows else '?')[:200]})")


@functools.cache
def _store_errors() -> tuple[type[BaseException], ...]:
    """What a failing store raises through MLflow: its own error, HTTP, SQL and socket errors."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, sqlite3.Error, OSError]
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.exceptions.RequestException)
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    return tuple(errors)


@contextlib.contextmanager
def _quick_http():
    """No retries and a 2 s timeout: for the calls made after the store already failed."""
    saved = {k: os.environ.get(k) for k in HTTP_LIMITS}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _file_lock(key: str):
    """An exclusive lock shared by every process that uses the same store."""
    path = (
        Path(tempfile.gettempdir()) / f"hsi-mlflow-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    )
    try:
        import fcntl
    except ImportError:  # Windows: no lock, MLflow's own behaviour
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_store(uri: str) -> None:
    """Create or upgrade a SQLite store once, under a lock, in WAL mode (other URIs: nothing).

    Two first runs in parallel otherwise both run MLflow's schema migrations on the empty file
    and one crashes (``duplicate column name: step``).
    """
    db = _sqlite_path(uri)
    if db is None or uri in _PREPARED:
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(str(db)):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except MlflowException as e:
            if "out-of-date database schema" not in str(e):
                raise
            from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry

            backup = db.with_name(db.name + ".bak")
            shutil.copy2(db, backup)
            log.warning("upgrading the MLflow schema of %s (backup: %s)", db, backup)
            _upgrade_db(create_sqlalchemy_engine_with_retry(uri))
            MlflowClient(uri).search_experiments(max_results=1)
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            con.execute("PRAGMA journal_mode=WAL")
    _PREPARED.add(uri)


def _experiment_id(client, name: str, uri: str, task: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
    db = _sqlite_path(uri)
    location = None
    if db is not None:  # artifacts beside the store, not in a temp workspace that goes away
        location = (db.parent / "mlruns" / name.replace("/", "-")).as_uri()
    try:
        tags = {"task": task, KIND_TAG: KIND}
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except MlflowException:  # created by a parallel run in the meantime
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _close_dead_runs(client, experiment_id: str, keep: str | None) -> None:
    """Mark KILLED the RUNNING runs that a process of this host left behind (kill -9, OOM)."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`hsi.host` = '{host}'",
        max_results=200,
    )
    for r in runs:
        pid = int(r.data.tags.get("hsi.pid", "0") or 0)
        if r.info.run_id != keep and pid and not _alive(pid):
            client.set_tag(r.info.run_id, "hsi.ended", f"process {pid} died without closing it")
            client.set_terminated(r.info.run_id, status="KILLED")
            log.info("MLflow run %s of dead process %d marked KILLED", r.info.run_id, pid)


def protocol_of(meta: dict, params: Any) -> str:
    """The evaluation protocol: what `prepare` recorded, else split mode and PCA fitting."""
    proto = meta.get("protocol")
    if isinstance(proto, dict):
        proto = proto.get("name") or json.dumps(proto, sort_keys=True)
    if proto:
        return str(proto)
    return f"{setting(params, 'split', 'mode')}-split, pca-fit-{setting(params, 'pca', 'fit_on')}"


def fingerprint_of(meta: dict) -> str | None:
    for key in ("fingerprint", "data_fingerprint", "prepared_fingerprint"):
        if meta.get(key):
            return str(meta[key])
    return None


def _source_class():
    from mlflow.data.dataset_source import DatasetSource

    class HsiSource(DatasetSource):
        """Where the cube came from: a URL, a package resource or a local path."""

        def __init__(self, uri: str):
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "hsi"

        def load(self, dst_path=None):
            raise NotImplementedError("fetch the data with `hsi fetch`")

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            return cls(str(raw_source))

        def to_dict(self) -> dict:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict):
            return cls(source_dict["uri"])

    return HsiSource


def _dataset_class():
    from mlflow.data.meta_dataset import MetaDataset

    class HsiDataset(MetaDataset):
        """A dataset known by its hashes, shape and split (the cube is never uploaded)."""

        def __init__(self, source, name, digest, profile):
            self._profile = profile
            super().__init__(source=source, name=name, digest=digest)

        @property
        def profile(self):
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    return HsiDataset


class _Health:
    """The first store failure of one run; after it the run's calls are no-ops."""

    def __init__(self, uri: str = "", run_name: str = ""):
        self.uri, self.run_name = uri, run_name
        self.error: str | None = None

    def fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = one_line(e)
            log.warning(
                "MLflow run %s at %s failed: %s; the stage goes on without tracking and reports "
                "it when done",
                self.run_name,
                self.uri,
                self.error,
            )


def _tracked(method):
    """Call ``method`` only while tracking is on and healthy; a store failure (any that MLflow,
    HTTP, SQL or the OS raises) is remembered, warned about once, and makes it return None."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if not self.active:
            return None
        try:
            return method(self, *args, **kwargs)
        except _store_errors() as e:
            self._health.fail(e)
            return None

    return guarded


class Run:
    """An MLflow run, or a no-op stand-in when tracking is off or its store failed."""

    def __init__(
        self,
        mlflow=None,
        run_id: str | None = None,
        dataset: str = "",
        *,
        experiment_id: str | None = None,
        health: _Health | None = None,
    ):
        self._mlflow = mlflow
        self._run_id = run_id
        self.dataset = dataset
        self.experiment_id = experiment_id
        self._health = health or _Health()

    @property
    def active(self) -> bool:
        """Tracking is on and its store has not failed."""
        return self._mlflow is not None and self._health.error is None

    @property
    def error(self) -> str | None:
        """The first store failure of this run (one line), or None."""
        return self._health.error

    @property
    def run_id(self) -> str | None:
        """Write it into the stage's output so later stages reopen this run by id."""
        return self._run_id

    def _client(self):
        return self._mlflow.MlflowClient()

    @_tracked
    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})

    @_tracked
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        self._mlflow.log_metrics(clean, step=step)

    @_tracked
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._mlflow.log_artifact(str(path), artifact_path)

    @_tracked
    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder`` (e.g. a report's figures and confusion matrices)."""
        if Path(folder).is_dir():
            self._mlflow.log_artifacts(str(folder), artifact_path)

    @_tracked
    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @_tracked
    def set_note(self, markdown: str) -> None:
        """The run's Description (markdown on its page), e.g. a report's ``summary.md``."""
        self._mlflow.set_tag("mlflow.note.content", markdown[:MAX_NOTE])

    def _log_input(
        self,
        *,
        name: str,
        source: str,
        sha256: str,
        shape: list[int] | tuple[int, ...],
        protocol: str,
        counts: dict[str, int],
        digest: str | None = None,
        context: str = "training",
        extra: dict | None = None,
    ) -> None:
        """``mlflow.log_input``: fills the UI's Dataset column (name and digest) and filter."""
        src = _source_class()(source)
        profile = {
            "sha256": sha256,
            "shape": list(shape),
            "protocol": protocol,
            "counts": {k: int(v) for k, v in counts.items()},
            **(extra or {}),
        }
        ds = _dataset_class()(src, name, (digest or sha256)[:12], profile)
        self._mlflow.log_input(ds, context=context, tags={"protocol": protocol})

    log_dataset = _tracked(_log_input)

    @_tracked
    def log_prepared(
        self,
        meta: dict,
        params: Any,
        counts: dict[str, int],
        context: str = "training",
        *,
        fold: int | None = None,
    ) -> None:
        """Protocol, fold and prepared-data fingerprint as tags (protocol and fold also as params
        for the UI's Group by), and the prepared dataset as a run input named
        ``<dataset>/<protocol>[/fold<k>]``: the runs table's default Dataset column then shows
        the protocol of each run without a click."""
        protocol = protocol_of(meta, params)
        fp = fingerprint_of(meta)
        fold = meta.get("fold") if fold is None else fold
        tags = {"protocol": protocol, "data_fingerprint": fp, "fold": fold}
        self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})
        logged = self._client().get_run(self._run_id).data.params
        new = {k: v for k, v in (("protocol", protocol), ("fold", fold)) if v is not None}
        if new := {k: v for k, v in new.items() if k not in logged}:
            self._mlflow.log_params(new)
        dataset = meta["dataset"]
        source = meta.get("source") or f"{dataset} (prepared)"
        self._log_input(
            name=dataset_label(dataset, protocol, fold),
            source=str(source),
            sha256=meta.get("cube_sha256", ""),
            shape=meta.get("shape", []),
            protocol=protocol,
            counts=counts,
            digest=fp or meta.get("cube_sha256"),
            context=context,
            extra={k: meta[k] for k in ("gt_sha256", "raw_bands", "crop") if k in meta}
            | ({"fingerprint": fp} if fp else {})
            | ({"fold": fold} if fold is not None else {}),
        )

    @_tracked
    def log_model(
        self, checkpoint: str | Path, model: str, kind: str = "classifier", tags: dict | None = None
    ):
        """Log the checkpoint as an MLflow model (signature, preprocessing) and register it as
        ``<model>-<dataset>``. Returns the new model version, or None when tracking is off."""
        from mlflow.models import Model

        name = registered_name(model, self.dataset)
        info = Model.log(
            None,
            name=model,
            flavor=_CheckpointFlavor(checkpoint, kind),
            registered_model_name=name,
            tags={k: str(v) for k, v in (tags or {}).items()},
        )
        version = info.registered_model_version
        if version is not None and tags:
            client = self._client()
            for k, v in tags.items():
                client.set_model_version_tag(name, str(version), k, str(v))
        log.info("registered MLflow model models:/%s/%s", name, version)
        return version

    @_tracked
    def link_runs(self, run_ids: Iterable[str | None], role: str = "report") -> str | None:
        """Mark this run as the ``role`` (``report``, ``study``) that compares ``run_ids``.

        Each linked run gets the tag ``hsi.<role>_run_id`` = this run's id (a column under
        Columns → Tags; the filter ``tags.`hsi.report_run_id` = '<id>'`` lists them) and loses
        a ``mlflow.parentRunId`` that nested it under an older report, so every run stays a row
        of its own. This run gets ``hsi.role`` and ``compared_runs.json``. The experiment's
        saved view ``hsi-compare`` is (re)written with columns for the linked runs' model, seed,
        protocol, fold and test scores. Unknown ids are skipped with a warning. Returns the UI
        path of that view (``#/experiments/<id>/runs?viewStateShareKey=hsi-compare``).
        """
        from mlflow.exceptions import MlflowException

        client = self._client()
        linked = []
        for rid in dict.fromkeys(filter(None, run_ids)):
            try:
                run = client.get_run(rid)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("MLflow run %s not found, not linked to the %s", rid, role)
                continue
            parent = run.data.tags.get("mlflow.parentRunId")
            if parent and parent != rid and _compares(client, parent):
                client.delete_tag(rid, "mlflow.parentRunId")
            client.set_tag(rid, f"hsi.{role}_run_id", self._run_id)
            linked.append(run)
        rows = [
            {"run_id": r.info.run_id, "run_name": r.info.run_name}
            | {k: r.data.params[k] for k in VIEW_PARAMS if k in r.data.params}
            for r in linked
        ]
        self._mlflow.log_dict({"role": role, "runs": rows}, "compared_runs.json")
        experiment_id = self.experiment_id or client.get_run(self._run_id).info.experiment_id
        view = _save_compare_view(client, experiment_id, linked, role)
        self._mlflow.set_tags({ROLE_TAG: role, "hsi.compared_runs": str(len(linked))})
        if view:
            self._mlflow.set_tag("hsi.compare_view", view)
            log.info("MLflow: %d runs compared in the saved view %s", len(linked), view)
        return view

    @_tracked
    def end_linked(self, role: str, status: str, keep: Collection[str] = ()) -> int:
        """End with ``status`` the runs tagged ``hsi.<role>_run_id`` = this run whose outputs were
        not written: those still RUNNING (a study's cells whose workers were cancelled by Ctrl-C
        or cut off by a failure never leave their own ``with start_run``) and those FINISHED on a
        worker whose result never reached the driver; ``keep`` are the runs whose outputs were
        written. Returns how many were ended."""
        client = self._client()
        experiment_id = self.experiment_id or client.get_run(self._run_id).info.experiment_id
        linked = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`hsi.{role}_run_id` = '{self._run_id}'",
            max_results=50_000,
        )
        kept = set(keep)
        cut = [
            r
            for r in linked
            if r.info.status in ("RUNNING", "FINISHED") and r.info.run_id not in kept
        ]
        for r in cut:
            client.set_terminated(r.info.run_id, status)
        return len(cut)

    def adopt_children(self, run_ids: list[str | None]) -> None:
        """Former name of ``link_runs(run_ids, role="report")``; runs are no longer nested."""
        self.link_runs(run_ids, role="report")


def dataset_label(dataset: str, protocol: str, fold: int | None = None) -> str:
    """Name of a run's dataset input, ``indian_pines/paper`` or ``indian_pines/leakfree/fold2``:
    the split a run saw, shown in the runs table's default Dataset column."""
    return f"{dataset}/{protocol}" + ("" if fold is None else f"/fold{fold}")


def per_sigma(scores: Mapping[float, Mapping[str, float | None]]) -> dict[str, float]:
    """``{30: {"mpsnr": 31.2, "mssim": 0.9, "sam": 4.1}}`` → ``{"mpsnr_sigma30": 31.2, ...}``.

    Logged by every denoiser's run and every baseline's run of ``<dataset>/denoising``, each
    name is one chart of the chart view with one bar per method: the methods compared per σ.
    """
    return {
        f"{score}_sigma{float(sigma):g}": float(value)
        for sigma, by_score in scores.items()
        for score, value in by_score.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _compares(client, run_id: str) -> bool:
    """Whether ``run_id`` is a run that compares others (a report, a study): only under such a
    parent is a run un-nested."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return True  # a parent that is gone hides its children all the same
    return ROLE_TAG in run.data.tags or run.info.run_name == "report"


def _view_columns(runs: list) -> list[str]:
    """Columns of the comparison view: identity params, then test and per-σ scores."""
    params = {k for r in runs for k in r.data.params}
    metrics = {k for r in runs for k in r.data.metrics}
    scores = sorted(k for k in metrics if k.startswith(("test_", "best_val_")) or "_sigma" in k)
    return (
        [f"params.`{k}`" for k in VIEW_PARAMS if k in params]
        + [f"metrics.`{k}`" for k in scores]
        + ["attributes.`Dataset`", "attributes.`Models`"]
    )


def _save_compare_view(client, experiment_id: str, runs: list, role: str) -> str | None:
    """(Re)write the experiment's saved view ``hsi-compare`` (listed in the UI's Views menu)."""
    if not runs:
        return None
    now = int(time.time() * 1000)
    columns = _view_columns(runs) + [f"tags.`hsi.{role}_run_id`"]
    envelope = {
        "name": "HSI comparison",
        "createdAt": now,
        "updatedAt": now,
        "state": json.dumps({"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}),
    }
    client.set_experiment_tag(
        experiment_id, f"mlflow.sharedViewState.{VIEW_ID}", json.dumps(envelope)
    )
    return view_path(experiment_id)


def view_path(experiment_id: str) -> str:
    """UI path of an experiment's comparison view, to append to the server's address."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}"


class _CheckpointFlavor:
    """``Model.log`` flavor that stores our .pt (tensors and plain values only) and no code."""

    __name__ = FLAVOR

    def __init__(self, checkpoint: str | Path, kind: str):
        self.checkpoint, self.kind = Path(checkpoint), kind

    def save_model(self, path, mlflow_model, **kwargs) -> None:
        import numpy as np
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        kind = self.kind
        ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.checkpoint, path / "checkpoint.pt")
        cfg = dict(ckpt["model_config"])
        if kind == "classifier":
            n_components, n_bands = np.shape(ckpt["pca"]["components"])
            pre = {
                "pca": {"bands_in": n_bands, "components": n_components},
                "patch": ckpt["patch"],
                "class_names": ckpt["class_names"],
            }
            out = TensorSpec(np.dtype(np.int64), (-1, -1), "labels")
        else:
            n_bands = int(np.asarray(ckpt["band_min"]).size)
            pre = {"band_scaling": "per-band min/max to [0, 1]", "noise": ckpt.get("noise")}
            out = TensorSpec(np.dtype(np.float32), (-1, -1, n_bands), "denoised")
        pre = {"kind": kind, "input_bands": n_bands, "model_config": cfg, **pre}
        (path / "preprocessing.json").write_text(json.dumps(pre, indent=2, default=str))
        mlflow_model.signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_bands), "cube")]),
            outputs=Schema([out]),
        )
        mlflow_model.add_flavor(
            FLAVOR,
            checkpoint="checkpoint.pt",
            preprocessing="preprocessing.json",
            kind=kind,
            loader="torch.load(weights_only=True)",
        )
        mlflow_model.save(str(path / "MLmodel"))


@contextlib.contextmanager
def checkpoint_file(ref: str, params: Any = None):
    """``with checkpoint_file(ref) as path:`` a checkpoint path as given, or the checkpoint of a
    registered model ``models:/NAME/VERSION`` downloaded to a temporary folder.

    A registry is only read, never created: with ``tracking.enabled: false`` a ``models:/``
    reference is refused (off means MLflow is not touched), and a SQLite store that does not
    exist is an error rather than a new empty ``mlflow.db``.
    """
    if not ref.startswith("models:/"):
        yield Path(ref)
        return
    if not tracking_enabled(params):
        raise TrackingError(
            f"{ref}: tracking is off (tracking.enabled: false), so no MLflow registry is read; "
            "pass the checkpoint .pt file instead, or set tracking.enabled: true"
        )
    with tempfile.TemporaryDirectory(prefix="hsi-model-") as dst:
        yield _fetch_registered(ref, params, Path(dst))


def _fetch_registered(uri: str, params: Any, dst: Path) -> Path:
    """The checkpoint of ``models:/NAME/VERSION``, refusing any model that is not our flavor (a
    pickled ``pytorch``/``python_function`` model would run code when loaded)."""
    tracking = resolve_uri(params)
    db = _sqlite_path(tracking)
    if db is not None and not db.is_file():
        raise TrackingError(
            f"{uri}: no MLflow store at {db} (nothing is registered there); set tracking.uri or "
            "$MLFLOW_TRACKING_URI to the store that holds the model, or pass the checkpoint .pt"
        )
    check_store(params)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        prepare_store(tracking)
        mlflow.set_tracking_uri(tracking)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as e:
        raise DataError(f"{uri}: cannot fetch it from {tracking} ({one_line(e)})") from e
    except _store_errors() as e:
        raise TrackingError(f"{uri}: the store {tracking} failed ({one_line(e)})") from e
    try:
        flavors = Model.load(str(local / "MLmodel")).flavors
    except (OSError, MlflowException) as e:
        raise DataError(f"{uri}: not an MLflow model (no readable MLmodel)") from e
    if FLAVOR not in flavors:
        raise DataError(
            f"{uri}: refused: its flavors are {sorted(flavors)}, not {FLAVOR!r}; loading it would "
            "unpickle Python code. Only models logged by `hsi train`/`hsi denoise_train` "
            "(a weights-only checkpoint) are loaded"
        )
    ckpt = local / flavors[FLAVOR]["checkpoint"]
    if ckpt.resolve().parent != local.resolve() or not ckpt.is_file():
        raise DataError(f"{uri}: its MLmodel names a missing checkpoint {ckpt.name!r}")
    if flavors[FLAVOR].get("kind") not in (None, "classifier"):
        raise DataError(f"{uri}: is a {flavors[FLAVOR]['kind']}, not a classifier")
    return ckpt


class start_run:  # noqa: N801 - used as a context manager like mlflow.start_run
    """``with start_run(params, dataset, run_name, tags, task=...) as run:`` logs to MLflow.

    Entering checks the store (``check_store``) and opens the run; a failure there raises
    ``TrackingError`` before the block does any work. Inside the block a store failure never
    interrupts the stage (see ``Run``); leaving the block without an exception then raises
    ``TrackingError`` naming it, after everything the block wrote. ``run_id`` reopens that run
    (as recorded by the stage that created it); if the store does not know it, a new run is
    started with a warning. Leaving the block by Ctrl-C ends the run KILLED, by another
    exception FAILED.
    """

    def __init__(
        self,
        params: Any,
        dataset: str,
        run_name: str,
        tags: dict | None = None,
        *,
        task: str = "classification",
        run_id: str | None = None,
    ):
        self.params, self.dataset, self.run_name = params, dataset, run_name
        self.experiment = experiment_name(dataset, task)
        self.task = task
        self.tags = dict(tags or {})
        self.run_id = run_id
        self._mlflow = None
        self._health = _Health(run_name=run_name)

    def __enter__(self) -> Run:
        if not tracking_enabled(self.params):
            return Run(None, dataset=self.dataset)
        uri = check_store(self.params)
        self._health.uri = uri
        import mlflow

        logging.getLogger("alembic").setLevel(logging.WARNING)
        try:
            run, exp_id = self._open(mlflow, uri)
        except _store_errors() as e:
            if mlflow.active_run() is not None:
                with _quick_http(), contextlib.suppress(*_store_errors()):
                    mlflow.end_run(status="FAILED")
            raise TrackingError(
                f"MLflow store {uri}: cannot open run {self.run_name} ({one_line(e)}); fix the "
                f"store or point tracking.uri at another, {OFF_HINT}"
            ) from e
        self._mlflow = mlflow
        log.info("MLflow run %s (%s) in %s at %s", self.run_name, run, self.experiment, uri)
        return Run(mlflow, run, self.dataset, experiment_id=exp_id, health=self._health)

    def _open(self, mlflow, uri: str) -> tuple[str, str]:
        prepare_store(uri)
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        exp_id = _experiment_id(client, self.experiment, uri, self.task)
        _close_dead_runs(client, exp_id, keep=self.run_id)
        self.tags.setdefault("git_commit", git_commit())
        tags = {k: str(v) for k, v in self.tags.items()}
        alive = {"hsi.host": socket.gethostname(), "hsi.pid": str(os.getpid())}
        # a study's serial cells run inside the study's own run: open theirs beside it, not under
        outer = mlflow.active_run()
        existing = None
        if self.run_id:
            try:
                existing = client.get_run(self.run_id)
            except mlflow.exceptions.MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning(
                    "MLflow run %s (recorded by an earlier stage) is not in %s; starting a new run",
                    self.run_id,
                    uri,
                )
        if existing is not None:
            exp_id = existing.info.experiment_id
            mlflow.set_experiment(experiment_id=exp_id)
            active = mlflow.start_run(run_id=self.run_id, nested=outer is not None)
            stage = self.tags.get("stage", "resumed")
            mlflow.set_tags({**{f"{stage}.{k}": v for k, v in tags.items()}, **alive})
        else:
            active = mlflow.start_run(
                experiment_id=exp_id,
                run_name=self.run_name,
                tags={**tags, "task": self.task, **alive},
                nested=outer is not None,
            )
        if outer is not None and "mlflow.parentRunId" not in tags:
            client.delete_tag(active.info.run_id, "mlflow.parentRunId")
        return active.info.run_id, exp_id

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._mlflow is None:
            return False
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        if self._health.error is None:
            try:
                self._mlflow.end_run(status=status)
            except _store_errors() as e:
                self._health.fail(e)
        else:
            with _quick_http(), contextlib.suppress(*_store_errors()):
                self._mlflow.end_run(status="FAILED")
        if self._health.error is not None and exc_type is None:
            raise TrackingError(
                f"MLflow run {self.run_name} at {self._health.uri} failed mid-run "
                f"({self._health.error}); the stage's outputs are written but its MLflow record "
                f"is incomplete: fix the store and rerun the stage, {OFF_HINT}"
            )
        return False
