"""Fingerprints of what an output was made from, and the check that refuses a mismatch.

A fingerprint is a sha256 hex digest of a canonical JSON form of plain values and/or the raw
bytes (with dtype and shape) of arrays. ``data/prepared/<dataset>/meta.json`` records the
fingerprint of the prepared cube, labels, split and PCA; a checkpoint records that fingerprint
and the fingerprint of the parameters it was trained with. A consumer that finds a different
fingerprint refuses to run instead of silently mixing outputs of different inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import DataError

SHORT = 12
"""Hex digits shown in messages (enough to tell two fingerprints apart)."""


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}")


def fingerprint(obj: Any = None, *arrays: np.ndarray) -> str:
    """sha256 of ``obj`` (JSON-able: dicts, lists, numbers, strings; key order ignored) and the
    dtype, shape and bytes of each array in ``arrays`` (in order).

    >>> fingerprint({"lr": 1e-3, "epochs": 5}) == fingerprint({"epochs": 5, "lr": 0.001})
    True
    """
    h = hashlib.sha256()
    h.update(json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":")).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"|{a.dtype.str}{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def prepared_fingerprint(
    cube: np.ndarray,
    labels: np.ndarray,
    split: Mapping[str, np.ndarray],
    pca: Mapping[str, np.ndarray],
) -> str:
    """Fingerprint of prepared data: the reduced cube, the labels, each split mask and each PCA
    array, by content (so two ``prepare`` runs with equal outputs share a fingerprint)."""
    split_keys, pca_keys = sorted(split), sorted(pca)
    return fingerprint(
        {"split": split_keys, "pca": pca_keys},
        cube,
        labels,
        *(np.asarray(split[k]) for k in split_keys),
        *(np.asarray(pca[k]) for k in pca_keys),
    )


def short(fp: str | None) -> str:
    return "none recorded" if not fp else fp[:SHORT]


def check_provenance(
    what: str,
    recorded: str | None,
    current: str | None,
    *,
    against: str,
    fix: str,
) -> None:
    """Raise DataError unless ``recorded`` (the fingerprint ``what`` was made from) equals
    ``current`` (the fingerprint of ``against`` now on disk).

    ``what`` and ``against`` name the two things (usually paths), ``fix`` the command that
    makes them agree again. Example::

        check_provenance(
            "models/indian_pines/hybridsn-seed0.pt",
            ckpt["meta"].get("data_fingerprint"),
            prepared.meta.get("fingerprint"),
            against="data/prepared/indian_pines",
            fix="hsi train --model hybridsn --seed 0 (or `dvc repro`)",
        )
    """
    if recorded and current and recorded == current:
        return
    if not current:
        raise DataError(
            f"{against}: records no data fingerprint (written by an older version); "
            f"run `hsi prepare` (or `dvc repro`) and then `{fix}`"
        )
    raise DataError(
        f"{what}: made from data fingerprint {short(recorded)} but {against} has "
        f"{short(current)}; run `{fix}` to rebuild it from the current data"
    )
