"""The one place that talks to MLflow.

Layout: one experiment per dataset and task, ``<dataset>/classification`` and
``<dataset>/denoising``, so each experiment's chart view holds only metrics that belong together
(HybridSN's ``best_epoch`` never shares an axis with DnCNN's). A run is reopened by the id its
producing stage wrote (``train.json``'s ``mlflow_run_id``), never looked up by name. The
``report`` run becomes the parent of the runs it compares.

Store: ``tracking.uri`` in params, then ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in
the project root (inside a ``dvc exp run --queue`` workspace, ``.dvc/tmp/exps/<tmp>``, the root of
the repository that queued it, so queued runs land in the same store). A SQLite store is created
or upgraded by one process at a time under a file lock and switched to WAL. With
``tracking.enabled: false`` every call is a no-op; the core never imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import DataError

log = logging.getLogger(__name__)

# No usage reports to the MLflow vendor (and no network timeouts offline) unless asked for.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DB_NAME = "mlflow.db"
TASKS = ("classification", "denoising")
FLAVOR = "hsi_checkpoint"
"""The MLflow model flavor we write: a checkpoint loaded with ``torch.load(weights_only=True)``."""
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
"""Makes the UI open an experiment on its training-runs table, not the GenAI overview."""
_PREPARED = set()


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


def resolve_uri(params: dict | None) -> str:
    uri = (params or {}).get("tracking", {}).get("uri")
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


def protocol_of(meta: dict, params: dict) -> str:
    """The evaluation protocol: what `prepare` recorded, else split mode and PCA fitting."""
    proto = meta.get("protocol")
    if isinstance(proto, dict):
        proto = proto.get("name") or json.dumps(proto, sort_keys=True)
    if proto:
        return str(proto)
    return f"{params['split']['mode']}-split, pca-fit-{params['pca']['fit_on']}"


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


class Run:
    """An MLflow run, or a no-op stand-in when tracking is off."""

    def __init__(self, mlflow=None, run_id: str | None = None, dataset: str = ""):
        self._mlflow = mlflow
        self._run_id = run_id
        self.dataset = dataset

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    @property
    def run_id(self) -> str | None:
        """Write it into the stage's output so later stages reopen this run by id."""
        return self._run_id

    def _client(self):
        return self._mlflow.MlflowClient()

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

    def log_dataset(
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
        if not self._mlflow:
            return
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

    def log_prepared(
        self, meta: dict, params: dict, counts: dict[str, int], context: str = "training"
    ) -> None:
        """Protocol and prepared-data fingerprint as tags (protocol also as a param for the
        UI's Group by), and the prepared dataset as a run input."""
        if not self._mlflow:
            return
        protocol = protocol_of(meta, params)
        fp = fingerprint_of(meta)
        self.set_tags({"protocol": protocol, **({"data_fingerprint": fp} if fp else {})})
        if "protocol" not in self._client().get_run(self._run_id).data.params:
            self.log_params({"protocol": protocol})
        dataset = meta["dataset"]
        manifest = Path("data/raw") / dataset / "manifest.json"
        try:
            source = json.loads(manifest.read_text())["cube"]["source"]
        except (OSError, ValueError, KeyError, TypeError):
            source = str(Path("data/prepared") / dataset)
        self.log_dataset(
            name=dataset,
            source=str(source),
            sha256=meta.get("cube_sha256", ""),
            shape=meta.get("shape", []),
            protocol=protocol,
            counts=counts,
            digest=fp or meta.get("cube_sha256"),
            context=context,
            extra={k: meta[k] for k in ("gt_sha256", "raw_bands", "crop") if k in meta}
            | ({"fingerprint": fp} if fp else {}),
        )

    def log_model(
        self, checkpoint: str | Path, model: str, kind: str = "classifier", tags: dict | None = None
    ):
        """Log the checkpoint as an MLflow model (signature, preprocessing) and register it as
        ``<model>-<dataset>``. Returns the new model version, or None when tracking is off."""
        if not self._mlflow:
            return None
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

    def adopt_children(self, run_ids: list[str | None]) -> None:
        """Make this run the parent of ``run_ids`` (the runs a report compares)."""
        if not self._mlflow:
            return
        client = self._client()
        for rid in filter(None, run_ids):
            try:
                client.set_tag(rid, "mlflow.parentRunId", self._run_id)
            except self._mlflow.exceptions.MlflowException as e:
                log.warning("MLflow run %s not found, not linked to the report (%s)", rid, e)


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
def checkpoint_file(ref: str, params: dict | None = None):
    """``with checkpoint_file(ref) as path:`` a checkpoint path as given, or the checkpoint of a
    registered model ``models:/NAME/VERSION`` downloaded to a temporary folder."""
    if not ref.startswith("models:/"):
        yield Path(ref)
        return
    with tempfile.TemporaryDirectory(prefix="hsi-model-") as dst:
        yield _fetch_registered(ref, params, Path(dst))


def _fetch_registered(uri: str, params: dict | None, dst: Path) -> Path:
    """The checkpoint of ``models:/NAME/VERSION``, refusing any model that is not our flavor (a
    pickled ``pytorch``/``python_function`` model would run code when loaded)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    tracking = resolve_uri(params)
    prepare_store(tracking)
    mlflow.set_tracking_uri(tracking)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as e:
        raise DataError(f"{uri}: cannot fetch it from {tracking} ({e.message})") from e
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

    ``run_id`` reopens that run (as recorded by the stage that created it); if the store does
    not know it, a new run is started with a warning. Leaving the block by Ctrl-C ends the run
    KILLED, by another exception FAILED.
    """

    def __init__(
        self,
        params: dict,
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

    def __enter__(self) -> Run:
        if not self.params["tracking"]["enabled"]:
            return Run(None, dataset=self.dataset)
        import mlflow

        logging.getLogger("alembic").setLevel(logging.WARNING)
        uri = resolve_uri(self.params)
        prepare_store(uri)
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        exp_id = _experiment_id(client, self.experiment, uri, self.task)
        _close_dead_runs(client, exp_id, keep=self.run_id)
        self.tags.setdefault("git_commit", git_commit())
        tags = {k: str(v) for k, v in self.tags.items()}
        alive = {"hsi.host": socket.gethostname(), "hsi.pid": str(os.getpid())}
        existing = None
        if self.run_id:
            try:
                existing = client.get_run(self.run_id)
            except mlflow.exceptions.MlflowException:
                log.warning(
                    "MLflow run %s (recorded by an earlier stage) is not in %s; starting a new run",
                    self.run_id,
                    uri,
                )
        if existing is not None:
            mlflow.set_experiment(experiment_id=existing.info.experiment_id)
            active = mlflow.start_run(run_id=self.run_id)
            stage = self.tags.get("stage", "resumed")
            mlflow.set_tags({**{f"{stage}.{k}": v for k, v in tags.items()}, **alive})
        else:
            active = mlflow.start_run(
                experiment_id=exp_id,
                run_name=self.run_name,
                tags={**tags, "task": self.task, **alive},
            )
        self._mlflow = mlflow
        log.info(
            "MLflow run %s (%s) in %s at %s",
            self.run_name,
            active.info.run_id,
            self.experiment,
            uri,
        )
        return Run(mlflow, active.info.run_id, self.dataset)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._mlflow is not None:
            if exc_type is None:
                status = "FINISHED"
            elif issubclass(exc_type, KeyboardInterrupt):
                status = "KILLED"
            else:
                status = "FAILED"
            self._mlflow.end_run(status=status)
        return False
