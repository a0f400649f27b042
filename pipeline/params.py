"""params.yaml: one schema, validated on load.

An unknown key or a bad value is a :class:`ParamsError` naming the dotted key, so a typo in
``dvc exp run -S split.mdoe=disjoint`` fails loudly instead of silently using a default.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.registry import DATASETS
from pipeline.errors import ParamsError
from pipeline.models import MODELS
from pipeline.models.denoisers import DENOISERS

MODEL_NAMES = tuple(MODELS)
DATASET_NAMES = (*DATASETS, "custom")


@dataclass(frozen=True)
class Field:
    default: Any
    check: Callable[[Any], str | None]


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


def _odd_patch(v):
    err = _num(3, integer=True)(v)
    return err or (None if v % 2 == 1 else "must be odd (the patch is centred on its pixel)")


def _crop(v):
    if v is None:
        return None
    ok = isinstance(v, list) and len(v) == 4 and all(isinstance(x, int) and x >= 0 for x in v)
    if not ok or v[0] >= v[1] or v[2] >= v[3]:
        return "must be null or [row0, row1, col0, col1] with row0 < row1 and col0 < col1"
    return None


def _names_list(choices):
    def check(v):
        if not isinstance(v, list) or not v:
            return "must be a non-empty list"
        bad = [x for x in v if x not in choices]
        if bad:
            return f"unknown {bad}; known: {', '.join(choices)}"
        return "must not repeat entries" if len(set(v)) != len(v) else None

    return check


def _seeds(v):
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of integers"
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v):
        return "must hold non-negative integers"
    return "must not repeat seeds" if len(set(v)) != len(v) else None


def _opt_str_list(v):
    if v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        return None
    return "must be null or a list of strings"


def _opt_int_list(v):
    if v is None or (
        isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        return None
    return "must be null or a list of integer label values"


def _opt_rgb(v):
    ok = isinstance(v, list) and len(v) == 3
    if v is None or (
        ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    ):
        return None
    return "must be null or a list of 3 band indices (red, green, blue)"


def _even(v):
    err = _num(0, integer=True)(v)
    return err or (None if v % 2 == 0 else "must be even (half the neighbours on each side)")


def _sigmas(v):
    if not isinstance(v, list) or not v or any(_num(0)(x) for x in v):
        return "must be a non-empty list of numbers >= 0"
    return None


PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"split.mode": "random", "split.train_fraction": 0.3, "pca.fit_on": "all"},
    "leakfree": {"split.mode": "disjoint", "split.guard": "window", "pca.fit_on": "train"},
    "custom": {},
}
"""What each ``protocol`` sets; a key it sets may be left null or given the same value."""

_UNSET = {
    "split.mode": "random",
    "split.train_fraction": 0.3,
    "split.guard": "centre",
    "pca.fit_on": "all",
}


def _apply_protocol(params: dict, where: str) -> None:
    """Fill the keys the protocol governs; a conflicting explicit value is an error."""
    name = params["protocol"]
    preset = PROTOCOLS[name]
    for key, fallback in _UNSET.items():
        section, field = key.split(".")
        value, want = params[section][field], preset.get(key)
        if want is not None and value is not None and value != want:
            raise ParamsError(
                f"{where}: '{key}' = {value!r} conflicts with protocol '{name}', which sets "
                f"{want!r}; set 'protocol: custom' to choose the split and PCA yourself"
            )
        if value is None:
            params[section][field] = fallback if want is None else want


SCHEMA: dict[str, Any] = {
    "protocol": Field("paper", _one_of(*PROTOCOLS)),
    "dataset": {
        "name": Field("indian_pines", _one_of(*DATASET_NAMES)),
        "source": Field("auto", _one_of("auto", "package", "url", "local")),
        "data_dir": Field(None, _opt_str),
        "crop": Field(None, _crop),
        "custom": {
            "cube": Field(None, _opt_str),
            "gt": Field(None, _opt_str),
            "cube_key": Field(None, _opt_str),
            "gt_key": Field(None, _opt_str),
            "class_names": Field(None, _opt_str_list),
            "title": Field(None, _opt_str),
            "pca_components": Field(None, _num(1, integer=True, optional=True)),
            "rgb_bands": Field(None, _opt_rgb),
            "citation": Field(None, _opt_str),
            "licence": Field(None, _opt_str),
            "ignore_labels": Field(None, _opt_int_list),
        },
    },
    "pca": {
        "components": Field(None, _num(1, integer=True, optional=True)),
        "fit_on": Field(None, _one_of(None, "all", "train")),  # null: set by the protocol
        "whiten": Field(False, _bool),
        "scale": Field("global", _one_of("none", "global")),
    },
    "split": {
        "mode": Field(None, _one_of(None, "random", "per_class", "disjoint", "fixed")),
        "seed": Field(0, _num(0, integer=True)),
        "train_fraction": Field(None, _num(0, 1, lo_open=True, hi_open=True, optional=True)),
        "per_class_count": Field(50, _num(1, integer=True)),
        "min_per_class": Field(5, _num(1, integer=True)),
        "val_fraction": Field(0.1, _num(0, 1, hi_open=True)),
        "tile_size": Field(None, _num(2, integer=True, optional=True)),
        "guard": Field(None, _one_of(None, "centre", "window")),
        "fixed": {
            "train": Field(None, _opt_str),
            "test": Field(None, _opt_str),
        },
    },
    "patch": {
        "size": Field(25, _odd_patch),
        "padding": Field("zero", _one_of("zero", "reflect")),
    },
    "train": {
        "models": Field(list(MODEL_NAMES), _names_list(MODEL_NAMES)),
        "seeds": Field([0], _seeds),
        "epochs": Field(100, _num(1, integer=True)),
        "batch_size": Field(256, _num(1, integer=True)),
        "batching": Field("auto", _one_of("auto", "patches", "tiles")),
        "tile_pixels": Field(512, _num(1, integer=True)),
        "tile_size": Field(None, _num(1, integer=True, optional=True)),
        "lr": Field(1e-3, _num(0, lo_open=True)),
        "weight_decay": Field(0.0, _num(0)),
        "schedule": Field("none", _one_of("none", "cosine", "step")),
        "early_stopping": Field(0, _num(0, integer=True)),
        "dropout": Field(0.4, _num(0, 1, hi_open=True)),
        "device": Field("auto", _one_of("auto", "cpu", "cuda")),
        "amp": Field(True, _bool),
    },
    "evaluate": {
        "batch_size": Field(1024, _num(1, integer=True)),
        "dense": Field(True, _bool),
        "strip_rows": Field(256, _num(1, integer=True)),
    },
    "denoise": {
        "models": Field(list(DENOISERS), _names_list(tuple(DENOISERS))),
        "depth": Field(10, _num(3, integer=True)),
        "channels": Field(32, _num(1, integer=True)),
        "rank": Field(None, _num(1, integer=True, optional=True)),
        "spectral_k": Field(24, _even),
        "sigma": Field(30, _num(0)),
        "blind": Field(True, _bool),
        "sigma_range": Field([0, 55], _sigmas),
        "patch_size": Field(40, _num(8, integer=True)),
        "batch_size": Field(16, _num(1, integer=True)),
        "epochs": Field(20, _num(1, integer=True)),
        "steps_per_epoch": Field(50, _num(1, integer=True)),
        "lr": Field(1e-3, _num(0, lo_open=True)),
        "early_stopping": Field(5, _num(0, integer=True)),
        "test_fraction": Field(0.3, _num(0, 1, lo_open=True, hi_open=True)),
        "eval_sigmas": Field([10, 30, 50], _sigmas),
        "robustness_sigmas": Field([0, 10, 30, 50], _sigmas),
        "robustness_model": Field("hybridsn", _one_of(*MODEL_NAMES)),
        "robustness_seed": Field(0, _num(0, integer=True)),
        "seed": Field(0, _num(0, integer=True)),
    },
    "tracking": {
        "enabled": Field(True, _bool),
        "uri": Field(None, _opt_str),
    },
}


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _walk(schema: dict, given: Any, prefix: str, where: str) -> dict:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ParamsError(f"{where}: '{prefix.rstrip('.')}' must be a mapping")
    unknown = sorted(set(given) - set(schema))
    if unknown:
        key = prefix + str(unknown[0])
        raise ParamsError(
            f"{where}: unknown key '{key}' (known under '{prefix.rstrip('.') or 'top level'}': "
            f"{', '.join(schema)})"
        )
    out = {}
    for name, spec in schema.items():
        key = prefix + name
        if isinstance(spec, dict):
            out[name] = _walk(spec, given.get(name), key + ".", where)
            continue
        value = given.get(name, copy.deepcopy(spec.default))
        problem = spec.check(value)
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept it where a number is valid
        numeric = isinstance(value, str) and _FLOAT.fullmatch(value.strip())
        if problem and numeric and not spec.check(float(value)):
            value, problem = float(value), None
        if problem:
            raise ParamsError(f"{where}: '{key}' = {value!r} {problem}")
        out[name] = value
    return out


def validate(raw: dict | None, where: str = "params") -> dict:
    """Return the full params (defaults filled in) or raise ParamsError naming the bad key."""
    params = _walk(SCHEMA, raw, "", where)
    _apply_protocol(params, where)
    if params["split"]["mode"] == "fixed" and not params["split"]["fixed"]["train"]:
        raise ParamsError(
            f"{where}: 'split.mode' = 'fixed' needs 'split.fixed.train' (a mask file)"
        )
    if params["dataset"]["name"] == "custom" and not (
        params["dataset"]["custom"]["cube"] and params["dataset"]["custom"]["gt"]
    ):
        raise ParamsError(f"{where}: dataset 'custom' needs 'dataset.custom.cube' and '.gt' paths")
    return params


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    return validate(raw, str(path))


def defaults() -> dict:
    return validate({})


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become comma-joined strings (for MLflow)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out
