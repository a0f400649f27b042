"""The one checkpoint module: model checkpoints (classifier and DnCNN) and per-epoch resume states.

Everything is written to a temp file and renamed into place, and holds only tensors, numbers,
strings, lists and dicts, so it loads with ``weights_only=True`` (loading never runs code).
Model checkpoints record their provenance: the fingerprint of the prepared data they were trained
on and the training parameters (see :mod:`pipeline.provenance`). Resume states carry a fingerprint
of everything that must be equal for resuming to be valid; a different one starts fresh.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.errors import DataError, ParamsError
from pipeline.io import atomic_path, write_bytes
from pipeline.provenance import check_provenance, fingerprint

__all__ = [
    "FORMAT_VERSION",
    "StateBlob",
    "StateFile",
    "StateStore",
    "capture_rng",
    "check_checkpoint_provenance",
    "checkpoint_bytes",
    "clear_state",
    "fingerprint",
    "load_checkpoint",
    "load_model",
    "load_state",
    "restore_rng",
    "resume_path",
    "save_checkpoint",
    "save_state",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Version of every file this module writes (1: before provenance and resume states; 2: before
every model config carried its registry name)."""


@dataclass(frozen=True)
class _Kind:
    required: tuple[str, ...]
    arrays: tuple[str, ...]
    """Fields given as numpy arrays (or dicts of them): stored as tensors, loaded back as numpy."""
    fix: str
    """The command that writes this kind of checkpoint, for error messages."""


KINDS = {
    "classifier": _Kind(
        ("state_dict", "model_config", "pca", "patch", "class_names", "meta"),
        ("pca",),
        "hsi train",
    ),
    "dncnn": _Kind(
        ("state_dict", "model_config", "band_min", "band_max", "noise", "split", "meta"),
        ("band_min", "band_max"),
        "hsi denoise_train",
    ),
}
STATE_KIND = "resume_state"


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers; TypeError for
    anything ``weights_only=True`` could not load back."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, np.ndarray):  # ascontiguousarray alone would make a 0-d array 1-d
        return torch.from_numpy(np.ascontiguousarray(obj).reshape(obj.shape))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.Size)):
        return obj
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a weights-only file")


def _numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _numpy(v) for k, v in obj.items()}
    return obj


def _save(path: str | os.PathLike, payload: dict) -> None:
    _remove_stale_temps(Path(path))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load(path: Path, what: str) -> dict:
    """torch.load with weights_only=True; DataError (one line, no advice to disable safe loading)
    for a missing, corrupt, truncated, foreign or code-carrying file.

    A file torch cannot load is "refused" when its pickle names a callable outside torch's
    weights-only allowlist (e.g. ``posix.system``), whatever error torch raised for it: the
    names are read by an unpickler whose every class and function is an inert stand-in.
    """
    import _compat_pickle
    import io
    import re
    import warnings
    import zipfile

    class Inert:
        """Stands in for each callable the pickle names: building or calling it does nothing."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __call__(self, *args: Any, **kwargs: Any) -> Inert:
            return Inert()

        def __setstate__(self, state: Any) -> None:
            pass

        def __setitem__(self, key: Any, value: Any) -> None:
            pass

        def append(self, item: Any) -> None:
            pass

        def extend(self, items: Any) -> None:
            pass

    class Names(pickle.Unpickler):
        def __init__(self, f: Any, found: list[str]) -> None:
            super().__init__(f)
            self.found = found

        def find_class(self, module: str, name: str) -> type:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            self.found.append(f"{module}.{name}")
            return Inert

        def persistent_load(self, pid: Any) -> Inert:
            return Inert()

    def unsafe_globals() -> list[str]:
        found: list[str] = []
        try:
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                streams = [io.BytesIO(z.read(pkl[0]))] if pkl else []
            count = 1
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
            try:  # not a zip: a bare pickle, or a legacy file of several in a row
                streams, count = [open(path, "rb")], 4  # noqa: SIM115 - closed below
            except OSError:
                return []
        for f in streams:
            with f:
                for _ in range(count):
                    try:
                        Names(f, found).load()
                    except Exception:
                        break
        try:
            from torch import _weights_only_unpickler as wo

            allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
        except (ImportError, AttributeError):  # private API gone: trust torch's own names only
            allowed = {g for g in found if g.startswith(("torch.", "collections."))}
        identifier = re.compile(r"^[A-Za-z_][\w.]*$")  # not bytes of a corrupt file read as names
        return [g for g in dict.fromkeys(found) if identifier.match(g) and g not in allowed]

    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol it does not use
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, …
        unsafe = unsafe_globals()
        if unsafe or "Unsupported global" in str(e):
            names = f" (it names {', '.join(unsafe[:3])})" if unsafe else ""
            raise DataError(
                f"{path}: refused: holds Python objects other than tensors, numbers, strings, "
                f"lists and dicts{names}; loading them could run code; not a pipeline file"
            ) from None
        if isinstance(e, pickle.UnpicklingError):
            raise DataError(
                f"{path}: not a readable {what} (corrupt or not a PyTorch file)"
            ) from None
        raise DataError(
            f"{path}: not a readable {what} (corrupt, truncated or not a PyTorch file: "
            f"{type(e).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a {what} (holds a {type(obj).__name__}, not a dict)")
    version = obj.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {version!r} is newer than this pipeline reads "
            f"({FORMAT_VERSION}); update the pipeline"
        )
    return obj


# --------------------------------------------------------------------------- model checkpoints


def _remove_stale_temps(path: Path) -> None:
    """Temp files of this target (only one run writes a given checkpoint or state): a writer
    killed with -9 leaves them, whatever their name format."""
    for stale in path.parent.glob(f".{path.name}.*.tmp{path.suffix}"):
        stale.unlink(missing_ok=True)


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> None:
    """Atomically write a model checkpoint (the fields of :func:`checkpoint_bytes`)."""
    _remove_stale_temps(Path(path))
    write_bytes(path, checkpoint_bytes(**fields))


def checkpoint_bytes(
    *,
    kind: str = "classifier",
    state_dict: Mapping[str, torch.Tensor],
    model_config: dict,
    meta: dict,
    data_fingerprint: str | None = None,
    params: dict | None = None,
    **fields: Any,
) -> bytes:
    """The content of a model checkpoint file of ``kind`` ("classifier" or "dncnn"): a study
    cell returns it to the driver, which writes it; :func:`save_checkpoint` writes it here.

    ``fields`` are the kind's other required entries (classifier: ``pca``, ``patch``,
    ``class_names``; dncnn: ``band_min``, ``band_max``, ``noise``, ``split``). Provenance:
    ``data_fingerprint`` is the prepared data's ``meta["fingerprint"]`` (or, for data not from
    ``prepare``, any :func:`fingerprint` of the inputs) and ``params`` the training parameters
    (a flat or nested dict of plain values); both are stored with the params' fingerprint.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(KINDS)}")
    missing = set(KINDS[kind].required) - {"state_dict", "model_config", "meta", *fields}
    if missing:
        raise TypeError(f"save_checkpoint(kind={kind!r}) needs {sorted(missing)}")
    params = dict(params or {})
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "model_config": _plain(dict(model_config), "model_config"),
        "meta": _plain(dict(meta), "meta"),
        "provenance": {
            "data_fingerprint": data_fingerprint,
            "params": _plain(params, "params"),
            "params_fingerprint": fingerprint(params),
        },
        **{k: _plain(v, k) for k, v in fields.items()},
    }
    payload["provenance"]["fields_fingerprint"] = _fields_fingerprint(kind, payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _fields_fingerprint(kind: str, ckpt: dict) -> str:
    """Fingerprint of what turns weights into predictions besides the weights: the model config,
    preprocessing arrays (PCA, band ranges) and the other required fields except ``meta``."""
    spec = KINDS[kind]
    plain = {k: ckpt[k] for k in spec.required if k not in ("state_dict", "meta", *spec.arrays)}
    names, arrays = [], []
    for key in spec.arrays:
        value = _numpy(ckpt[key])
        for sub in sorted(value) if isinstance(value, dict) else [None]:
            names.append(f"{key}.{sub}" if sub else key)
            arrays.append(np.asarray(value[sub] if sub else value))
    return fingerprint({"fields": plain, "arrays": names}, *arrays)


def load_checkpoint(path: str | os.PathLike, kind: str = "classifier") -> dict:
    """Load and check a model checkpoint of ``kind``; array fields come back as numpy.

    The returned dict also has ``path``. DataError names the file and what is missing or wrong.
    """
    path = Path(path)
    spec = KINDS[kind]
    what = f"{kind} checkpoint"
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; run `{spec.fix}` (or `dvc repro`) first")
    ckpt = _load(path, what)
    found = ckpt.get("kind", "classifier")  # format 1 classifier checkpoints had no kind
    if found != kind:
        raise DataError(f"{path}: a {found} checkpoint, not a {what}")
    missing = [k for k in spec.required if k not in ckpt]
    if missing:
        raise DataError(f"{path}: not a {what}: missing {', '.join(missing)}")
    sd = ckpt["state_dict"]
    if (
        not isinstance(sd, dict)
        or not sd
        or not all(isinstance(v, torch.Tensor) for v in sd.values())
    ):
        raise DataError(f"{path}: 'state_dict' is not a non-empty dict of tensors")
    for key in ("model_config", "meta"):
        if not isinstance(ckpt[key], dict):
            raise DataError(f"{path}: '{key}' is a {type(ckpt[key]).__name__}, not a dict")
    for key in spec.arrays:
        vals = ckpt[key].values() if isinstance(ckpt[key], dict) else [ckpt[key]]
        if not all(isinstance(v, torch.Tensor) for v in vals):
            raise DataError(f"{path}: '{key}' does not hold arrays")
        ckpt[key] = _numpy(ckpt[key])
    ckpt.setdefault("provenance", {})
    recorded = ckpt["provenance"].get("fields_fingerprint")
    if recorded and recorded != _fields_fingerprint(kind, ckpt):
        raise DataError(
            f"{path}: its model config or preprocessing arrays differ from those it was saved "
            f"with (fingerprint {recorded[:12]}); the file was altered; run `{spec.fix}` again"
        )
    ckpt["path"] = str(path)
    return ckpt


def _build(ckpt: dict) -> torch.nn.Module:
    from pipeline.models import rebuild

    return rebuild(ckpt["model_config"])


def load_model(
    ckpt: dict, device="cpu", build: Callable[[dict], torch.nn.Module] | None = None
) -> torch.nn.Module:
    """The checkpoint's model in eval mode on ``device``.

    ``build(ckpt)`` makes the untrained module (default: from ``model_config`` by kind).
    DataError names the file and the missing/unexpected weights or the bad config.
    """
    path = ckpt.get("path", "checkpoint")
    try:
        model = (build or _build)(ckpt)
    except (TypeError, ValueError, KeyError, ParamsError) as e:
        raise DataError(f"{path}: 'model_config' does not describe a model ({e})") from None
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as e:  # same names, other shapes
        sizes = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise DataError(
            f"{path}: 'state_dict' does not fit the model: {_few(sizes, 1) or 'unreadable'}"
        ) from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing weights {_few(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected weights {_few(result.unexpected_keys)}")
    if problems:
        raise DataError(f"{path}: 'state_dict' does not fit the model: {'; '.join(problems)}")
    return model.to(device).eval()


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_checkpoint_provenance(
    ckpt: dict, current: str | None, *, against: str, fix: str | None = None
) -> None:
    """DataError unless the checkpoint was trained on data with fingerprint ``current``.

    ``against`` names where ``current`` comes from (e.g. ``data/prepared/indian_pines``), ``fix``
    the command that retrains (default: the kind's training command).
    """
    check_provenance(
        ckpt.get("path", "checkpoint"),
        ckpt.get("provenance", {}).get("data_fingerprint"),
        current,
        against=against,
        fix=fix or f"{KINDS[ckpt.get('kind', 'classifier')].fix} (or `dvc repro`)",
    )


# --------------------------------------------------------------------------- resume states


def resume_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where the resume state of the run writing ``checkpoint_path`` lives: beside it in
    ``.resume/``, which DVC does not delete before re-running the stage (git ignores ``*.pt``)."""
    p = Path(checkpoint_path)
    return p.parent / ".resume" / p.name


def save_state(path: str | os.PathLike, state: Mapping[str, Any], *, fingerprint: str) -> None:
    """Atomically write a training state (tensors, numbers, strings, lists, dicts, numpy arrays).

    ``fingerprint`` identifies everything that must be unchanged to resume from it (data
    fingerprint, training params, seed); a kill -9 at any moment leaves the previous state intact.
    """
    _save(
        path,
        {
            "format_version": FORMAT_VERSION,
            "kind": STATE_KIND,
            "fingerprint": fingerprint,
            "state": _plain(dict(state), "state"),
        },
    )


def load_state(path: str | os.PathLike, *, fingerprint: str) -> dict | None:
    """The saved state, or None (start fresh) when there is none, it is unreadable, or it was
    made with a different ``fingerprint``; the reason is logged. Numpy arrays come back as tensors."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = _load(path, "resume state")
    except DataError as e:
        log.warning("%s; starting fresh", e)
        return None
    if obj.get("kind") != STATE_KIND or not isinstance(obj.get("state"), dict):
        log.warning("%s: not a resume state; starting fresh", path)
        return None
    if obj.get("fingerprint") != fingerprint:
        log.warning(
            "%s: saved for other data or params (fingerprint %s, now %s); starting fresh",
            path,
            str(obj.get("fingerprint"))[:12],
            fingerprint[:12],
        )
        return None
    return obj["state"]


def clear_state(path: str | os.PathLike) -> None:
    """Remove a resume state (after the run finished and its checkpoint is written)."""
    Path(path).unlink(missing_ok=True)


class StateStore(Protocol):
    """Where the training loop keeps its per-epoch resume state."""

    def load(self) -> dict | None: ...

    def save(self, state: Mapping[str, Any]) -> None: ...


class StateFile:
    """A resume state in a file (:func:`save_state` / :func:`load_state`); ``extra`` (e.g. the
    MLflow run id) is saved with every state. :meth:`load` reads the file once."""

    def __init__(self, path: str | os.PathLike, fingerprint: str, extra: dict | None = None):
        self.path, self.fingerprint, self.extra = Path(path), fingerprint, dict(extra or {})
        self._loaded: tuple[dict | None] | None = None

    def load(self) -> dict | None:
        if self._loaded is None:
            self._loaded = (load_state(self.path, fingerprint=self.fingerprint),)
        return self._loaded[0]

    def save(self, state: Mapping[str, Any]) -> None:
        save_state(self.path, {**state, **self.extra}, fingerprint=self.fingerprint)

    def clear(self) -> None:
        clear_state(self.path)


class StateBlob:
    """A resume state kept as bytes by ``put(bytes)`` / ``get() -> bytes | None`` (the study's
    per-cell store, which outlives a killed worker without a shared filesystem)."""

    def __init__(self, get: Callable[[], bytes | None], put: Callable[[bytes], None], fp: str):
        self._get, self._put, self.fingerprint = get, put, fp

    def load(self) -> dict | None:
        data = self._get()
        if not data:
            return None
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # an unreadable state only costs the resume
            log.warning("resume state unreadable (%s); starting fresh", type(e).__name__)
            return None
        if (
            not isinstance(obj, dict)
            or obj.get("kind") != STATE_KIND
            or obj.get("fingerprint") != self.fingerprint
        ):
            return None
        return obj["state"]

    def save(self, state: Mapping[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "format_version": FORMAT_VERSION,
                "kind": STATE_KIND,
                "fingerprint": self.fingerprint,
                "state": _plain(dict(state), "state"),
            },
            buf,
        )
        self._put(buf.getvalue())


Generators = Mapping[str, "torch.Generator | np.random.Generator"]


def capture_rng(generators: Generators | None = None) -> dict:
    """The state of torch's global CPU (and CUDA) RNG, numpy's and Python's global RNGs and each
    named generator, as plain values a weights-only file can hold."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG that seeding sets
    py_version, py_internal, py_gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_state[0],
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            out["generators"][name] = gen.get_state()
        else:  # numpy Generator: its state holds 128-bit ints, kept exactly as JSON text
            out["generators"][name] = json.dumps(gen.bit_generator.state)
    return out


def restore_rng(rng: Mapping[str, Any], generators: Generators | None = None) -> None:
    """Put back what :func:`capture_rng` recorded (the same ``generators`` names)."""
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["name"],
            np.asarray(n["key"]).astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, gen in (generators or {}).items():
        saved = rng["generators"][name]
        if isinstance(gen, torch.Generator):
            gen.set_state(saved)
        else:
            gen.bit_generator.state = json.loads(saved)
