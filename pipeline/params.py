"""params.yaml as typed config: one frozen dataclass per section, validated on load.

Each field's default and check live here and nowhere else (``params.yaml`` only restates them
for the reader). An unknown key, a bad value or a broken cross-section rule is a
:class:`ParamsError` naming the dotted key, so a typo in ``dvc exp run -S split.mdoe=disjoint``
fails loudly instead of silently using a default. Sections are read as attributes
(``params.train.epochs``) and, for generic code such as logging, as mappings
(``params["train"]["epochs"]``); changing a value makes a new, re-validated object
(:meth:`Params.override`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.registry import DATASETS
from pipeline.errors import ParamsError
from pipeline.models import CLASSIFIERS, DENOISERS

DATASET_NAMES = (*DATASETS, "custom")
Check = Callable[[Any], "str | None"]


def param(default: Any, check: Check, doc: str = "") -> Any:
    """A field with its default and its check (``check(value)`` returns a problem or None)."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


class Section(Mapping):
    """Read access by key as well as by attribute; sections are immutable."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:  # type: ignore[override]
        return [f.name for f in dataclasses.fields(self)]

    def to_dict(self) -> dict:
        """Plain nested dicts and lists, as params.yaml would hold them."""
        return {k: _plain(getattr(self, k)) for k in self.keys()}


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- checks


def _one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(str, choices))}"

    return check


def _num(lo=None, hi=None, *, integer=False, lo_open=False, hi_open=False, optional=False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return "must be an integer" if integer else "must be a number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    return check


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _opt_str(v):
    return None if v is None or isinstance(v, str) else "must be a string or null"


def _is_list(v) -> bool:
    return isinstance(v, list | tuple)


def _ints(v) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _odd_patch(v):
    err = _num(3, integer=True)(v)
    return err or (None if v % 2 == 1 else "must be odd (the patch is centred on its pixel)")


def _crop(v):
    if v is None:
        return None
    ok = _is_list(v) and len(v) == 4 and _ints(v) and all(x >= 0 for x in v)
    if not ok or v[0] >= v[1] or v[2] >= v[3]:
        return "must be null or [row0, row1, col0, col1] with row0 < row1 and col0 < col1"
    return None


def _names(choices, *, optional=False):
    def check(v):
        if v is None and optional:
            return None
        if not _is_list(v) or not v:
            return "must be a non-empty list"
        bad = [x for x in v if x not in choices]
        if bad:
            return f"unknown {bad}; known: {', '.join(choices)}"
        return "must not repeat entries" if len(set(v)) != len(v) else None

    return check


def _int_list(*, optional=False, minimum=0, what="integers"):
    def check(v):
        if v is None and optional:
            return None
        if not _is_list(v) or not v or not _ints(v) or any(x < minimum for x in v):
            return f"must be a non-empty list of {what} >= {minimum}"
        return "must not repeat entries" if len(set(v)) != len(v) else None

    return check


def _opt_str_list(v):
    if v is None or (_is_list(v) and all(isinstance(x, str) for x in v)):
        return None
    return "must be null or a list of strings"


def _opt_label_values(v):
    return None if v is None or (_is_list(v) and _ints(v)) else "must be null or a list of integers"


def _opt_rgb(v):
    if v is None or (_is_list(v) and len(v) == 3 and _ints(v) and min(v) >= 0):
        return None
    return "must be null or a list of 3 band indices (red, green, blue)"


def _even(v):
    err = _num(0, integer=True)(v)
    return err or (None if v % 2 == 0 else "must be even (half the neighbours on each side)")


def _sigmas(v):
    if not _is_list(v) or not v or any(_num(0)(x) for x in v):
        return "must be a non-empty list of numbers >= 0"
    return None


def _sigma_range(v):
    if _sigmas(v) or len(v) != 2 or v[0] > v[1]:
        return "must be [low, high] with 0 <= low <= high"
    return None


def _gpus(v):
    return _num(0, optional=True)(v)


def _address(v):
    if v is None:
        return None
    if not isinstance(v, str) or not re.fullmatch(r"[\w.\-]+:\d+|auto|ray://[\w.\-]+:\d+", v):
        return "must be null (an embedded local Ray), 'auto' or HOST:PORT of a Ray head"
    return None


# ----------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class CustomDataset(Section):
    cube: str | None = param(None, _opt_str, ".mat (v5 or v7.3), .npy or ENVI .hdr")
    gt: str | None = param(None, _opt_str)
    cube_key: str | None = param(None, _opt_str, "array key inside a .mat; auto when unambiguous")
    gt_key: str | None = param(None, _opt_str)
    class_names: tuple | None = param(None, _opt_str_list)
    title: str | None = param(None, _opt_str)
    pca_components: int | None = param(None, _num(1, integer=True, optional=True))
    rgb_bands: tuple | None = param(None, _opt_rgb)
    citation: str | None = param(None, _opt_str)
    licence: str | None = param(None, _opt_str)
    ignore_labels: tuple | None = param(None, _opt_label_values)


@dataclass(frozen=True)
class DatasetParams(Section):
    name: str = param("indian_pines", _one_of(*DATASET_NAMES))
    source: str = param("auto", _one_of("auto", "package", "url", "local"))
    data_dir: str | None = param(None, _opt_str)
    crop: tuple | None = param(None, _crop, "[row0, row1, col0, col1]")
    custom: CustomDataset = section(CustomDataset)


@dataclass(frozen=True)
class PCAParams(Section):
    components: int | None = param(None, _num(1, integer=True, optional=True))
    fit_on: str | None = param(None, _one_of(None, "all", "train"))
    whiten: bool = param(False, _bool)
    scale: str = param("global", _one_of("none", "global"))


@dataclass(frozen=True)
class FixedSplit(Section):
    train: str | None = param(None, _opt_str)
    test: str | None = param(None, _opt_str)


@dataclass(frozen=True)
class SplitParams(Section):
    mode: str | None = param(
        None, _one_of(None, "random", "per_class", "disjoint", "kfold", "fixed")
    )
    seed: int = param(0, _num(0, integer=True))
    train_fraction: float | None = param(
        None, _num(0, 1, lo_open=True, hi_open=True, optional=True)
    )
    per_class_count: int = param(50, _num(1, integer=True))
    min_per_class: int = param(5, _num(1, integer=True))
    val_fraction: float = param(0.1, _num(0, 1, hi_open=True))
    tile_size: int | None = param(None, _num(2, integer=True, optional=True))
    guard: str | None = param(None, _one_of(None, "centre", "window"))
    folds: int = param(5, _num(2, integer=True), "kfold: number of folds")
    fold: int = param(0, _num(0, integer=True), "kfold: the test fold of this run")
    block_size: int | None = param(None, _num(1, integer=True, optional=True))
    context: str = param("own", _one_of("own", "all"), "kfold: what a test window sees")
    fixed: FixedSplit = section(FixedSplit)


@dataclass(frozen=True)
class PatchParams(Section):
    size: int = param(25, _odd_patch)
    padding: str = param("zero", _one_of("zero", "reflect"))


@dataclass(frozen=True)
class ComputeParams(Section):
    device: str = param("auto", _one_of("auto", "cpu", "cuda"))
    amp: bool = param(True, _bool, "bf16 autocast on CUDA and bf16-capable CPUs (training)")


@dataclass(frozen=True)
class InferenceParams(Section):
    batch_size: int = param(1024, _num(1, integer=True))
    dense: bool = param(True, _bool)
    strip_rows: int = param(256, _num(1, integer=True))


@dataclass(frozen=True)
class TrainParams(Section):
    models: tuple = param(tuple(n for n, s in CLASSIFIERS.items() if s.family == "cnn"),
                          _names(tuple(CLASSIFIERS)))  # fmt: skip
    seeds: tuple = param((0,), _int_list(what="seeds"))
    baseline: str = param("hybridsn", _one_of(*CLASSIFIERS), "the report compares against it")
    epochs: int = param(100, _num(1, integer=True))
    batch_size: int = param(256, _num(1, integer=True))
    batching: str = param("auto", _one_of("auto", "patches", "tiles"))
    tile_pixels: int = param(512, _num(1, integer=True))
    tile_size: int | None = param(None, _num(1, integer=True, optional=True))
    lr: float = param(1e-3, _num(0, lo_open=True))
    weight_decay: float = param(0.0, _num(0))
    schedule: str = param("none", _one_of("none", "cosine", "step"))
    step_at: float = param(0.6, _num(0, 1, lo_open=True, hi_open=True))
    early_stopping: int = param(0, _num(0, integer=True))
    dropout: float = param(0.4, _num(0, 1, hi_open=True))
    augment: str = param("none", _one_of("none", "flips"))
    label_smoothing: float = param(0.0, _num(0, 1, hi_open=True))
    class_weights: str = param("none", _one_of("none", "balanced"))


@dataclass(frozen=True)
class DenoiseParams(Section):
    models: tuple = param(tuple(DENOISERS), _names(tuple(DENOISERS)))
    depth: int = param(10, _num(3, integer=True))
    channels: int = param(32, _num(1, integer=True))
    rank: int | None = param(None, _num(1, integer=True, optional=True))
    spectral_k: int = param(24, _even)
    sigma: float = param(30, _num(0))
    blind: bool = param(True, _bool)
    sigma_range: tuple = param((0, 55), _sigma_range)
    patch_size: int = param(40, _num(8, integer=True))
    batch_size: int = param(16, _num(1, integer=True))
    epochs: int = param(20, _num(1, integer=True))
    steps_per_epoch: int = param(50, _num(1, integer=True))
    val_patches: int = param(64, _num(1, integer=True), "fixed noisy validation patches")
    lr: float = param(1e-3, _num(0, lo_open=True))
    weight_decay: float = param(0.0, _num(0))
    schedule: str = param("step", _one_of("none", "cosine", "step"))
    step_at: float = param(0.6, _num(0, 1, lo_open=True, hi_open=True))
    early_stopping: int = param(5, _num(0, integer=True))
    test_fraction: float = param(0.3, _num(0, 1, lo_open=True, hi_open=True))
    eval_sigmas: tuple = param((10, 30, 50), _sigmas)
    robustness_sigmas: tuple = param((0, 10, 30, 50), _sigmas)
    robustness_model: str = param("hybridsn", _one_of(*CLASSIFIERS))
    robustness_seed: int = param(0, _num(0, integer=True))
    seed: int = param(0, _num(0, integer=True))


@dataclass(frozen=True)
class TrackingParams(Section):
    enabled: bool = param(True, _bool)
    uri: str | None = param(None, _opt_str)


@dataclass(frozen=True)
class StudyParams(Section):
    protocol: str | None = param(
        "leakfree", _one_of(None, "paper", "leakfree", "custom"), "null = the top-level protocol"
    )
    models: tuple = param(tuple(CLASSIFIERS), _names(tuple(CLASSIFIERS)))
    seeds: tuple = param((0,), _int_list(what="seeds"))
    folds: tuple | None = param(None, _int_list(optional=True, what="fold indices"))
    engine: str = param("ray", _one_of("ray", "serial"))
    address: str | None = param(None, _address)
    cpus_per_cell: int = param(1, _num(1, integer=True))
    gpus_per_cell: float | None = param(None, _gpus)
    max_retries: int = param(3, _num(0, integer=True))


PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"split.mode": "random", "split.train_fraction": 0.3, "pca.fit_on": "all"},
    "leakfree": {"split.mode": "kfold", "pca.fit_on": "train"},
    "custom": {},
}
"""What each ``protocol`` sets; a key it sets may be left null or given the same value."""

_UNSET = {
    "split.mode": "random",
    "split.train_fraction": 0.3,
    "split.guard": "centre",
    "pca.fit_on": "all",
}
"""Values of the protocol-governed keys that a protocol leaves open (``custom``)."""


@dataclass(frozen=True)
class Params(Section):
    protocol: str = param("paper", _one_of(*PROTOCOLS))
    dataset: DatasetParams = section(DatasetParams)
    pca: PCAParams = section(PCAParams)
    split: SplitParams = section(SplitParams)
    patch: PatchParams = section(PatchParams)
    compute: ComputeParams = section(ComputeParams)
    inference: InferenceParams = section(InferenceParams)
    train: TrainParams = section(TrainParams)
    denoise: DenoiseParams = section(DenoiseParams)
    tracking: TrackingParams = section(TrackingParams)
    study: StudyParams = section(StudyParams)

    def override(self, changes: Mapping[str, Any], where: str = "params") -> Params:
        """A new, re-validated Params with dotted keys changed: ``{"train.epochs": 2}``."""
        raw = self.to_dict()
        for dotted, value in changes.items():
            *path, last = dotted.split(".")
            node = raw
            for part in path:
                if not isinstance(node.get(part), dict):
                    raise ParamsError(f"{where}: unknown key '{dotted}'")
                node = node[part]
            if last not in node:
                raise ParamsError(f"{where}: unknown key '{dotted}'")
            node[last] = value
        return validate(raw, where)

    def with_protocol(self, name: str, where: str = "params") -> Params:
        """The same params under protocol ``name``: the keys the current protocol filled in go
        back to null so the new one fills them; keys set explicitly must agree with it."""
        raw = self.to_dict()
        raw["protocol"] = name
        for key, fallback in _UNSET.items():
            sec, fld = key.split(".")
            if raw[sec][fld] == PROTOCOLS[self.protocol].get(key, fallback):
                raw[sec][fld] = None
        return validate(raw, where)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _build(cls: type, given: Any, prefix: str, where: str) -> Any:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ParamsError(f"{where}: '{prefix.rstrip('.')}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - set(fields), key=str)
    if unknown:
        raise ParamsError(
            f"{where}: unknown key '{prefix}{unknown[0]}' (known under "
            f"'{prefix.rstrip('.') or 'top level'}': {', '.join(fields)})"
        )
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if "section" in f.metadata:
            values[name] = _build(f.metadata["section"], given.get(name), key + ".", where)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = given.get(name, default)
        check = f.metadata["check"]
        problem = check(value)
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept it where a number is valid
        numeric = isinstance(value, str) and _FLOAT.fullmatch(value.strip())
        if problem and numeric and not check(float(value)):
            value, problem = float(value), None
        if problem:
            raise ParamsError(f"{where}: '{key}' = {value!r} {problem}")
        values[name] = tuple(value) if isinstance(value, list) else value
    return values


def _fill_protocol(values: dict, where: str) -> None:
    """Fill the keys the protocol governs; a conflicting explicit value is an error."""
    name = values["protocol"]
    preset = PROTOCOLS[name]
    for key, fallback in _UNSET.items():
        sec, fld = key.split(".")
        value, want = values[sec][fld], preset.get(key)
        if want is not None and value is not None and value != want:
            raise ParamsError(
                f"{where}: '{key}' = {value!r} conflicts with protocol '{name}', which sets "
                f"{want!r}; set 'protocol: custom' to choose the split and PCA yourself"
            )
        if value is None:
            values[sec][fld] = fallback if want is None else want


def _cross_checks(p: Params, where: str) -> None:
    """Rules that tie keys of different sections together, checked once, on load."""
    sp, dp, tp = p.split, p.denoise, p.train
    if sp.mode == "fixed" and not sp.fixed.train:
        raise ParamsError(
            f"{where}: 'split.mode' = 'fixed' needs 'split.fixed.train' (a mask file)"
        )
    if sp.mode == "kfold" and sp.fold >= sp.folds:
        raise ParamsError(
            f"{where}: 'split.fold' = {sp.fold} must be below 'split.folds' = {sp.folds}"
        )
    if p.dataset.name == "custom" and not (p.dataset.custom.cube and p.dataset.custom.gt):
        raise ParamsError(f"{where}: dataset 'custom' needs 'dataset.custom.cube' and '.gt' paths")
    if dp.robustness_model not in tp.models:
        raise ParamsError(
            f"{where}: 'denoise.robustness_model' = {dp.robustness_model!r} must be one of "
            f"'train.models' {list(tp.models)}"
        )
    if dp.robustness_seed not in tp.seeds:
        raise ParamsError(
            f"{where}: 'denoise.robustness_seed' = {dp.robustness_seed} must be one of "
            f"'train.seeds' {list(tp.seeds)}"
        )
    if CLASSIFIERS[dp.robustness_model].family != "cnn":
        raise ParamsError(
            f"{where}: 'denoise.robustness_model' = {dp.robustness_model!r} must be a CNN"
        )
    study_folds = p.study.folds or ()
    if any(f >= sp.folds for f in study_folds):
        raise ParamsError(
            f"{where}: 'study.folds' = {list(study_folds)} must lie below 'split.folds' = "
            f"{sp.folds}"
        )


def _make(cls: type, values: dict) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        v = values[f.name]
        kwargs[f.name] = _make(f.metadata["section"], v) if "section" in f.metadata else v
    return cls(**kwargs)


def validate(raw: Mapping | None, where: str = "params") -> Params:
    """The full, typed params (defaults filled in), or ParamsError naming the bad key."""
    values = _build(Params, dict(raw) if raw is not None else {}, "", where)
    _fill_protocol(values, where)
    params = _make(Params, values)
    _cross_checks(params, where)
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ParamsError(f"{loader.name}: key '{key}' repeats (line {line}); keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file: a non-empty YAML mapping in UTF-8, no repeated keys."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (or not a regular file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()
    if raw is None:
        raise ParamsError(f"{path}: is empty; it must hold the pipeline's sections (see README)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, not a {type(raw).__name__}")
    return validate(raw, str(path))


def defaults() -> Params:
    return validate({})


def flatten(params: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become comma-joined strings (for MLflow)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list | tuple):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out
