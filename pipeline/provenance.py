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
import os
from collections.abc import Mapping
from pathlib import Path
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
    spectra: np.ndarray | None = None,
) -> str:
    """Fingerprint of prepared data: the reduced cube, the labels, each split mask and each PCA
    array, and the full spectra when kept, by content (so two ``prepare`` runs with equal outputs
    share a fingerprint)."""
    split_keys, pca_keys = sorted(split), sorted(pca)
    head = {"split": split_keys, "pca": pca_keys} | (
        {"spectra": True} if spectra is not None else {}
    )
    return fingerprint(
        head,
        cube,
        labels,
        *(np.asarray(split[k]) for k in split_keys),
        *(np.asarray(pca[k]) for k in pca_keys),
        *([] if spectra is None else [spectra]),
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


def check_prepared(
    where: str,
    meta: Mapping[str, Any],
    cube: np.ndarray,
    labels: np.ndarray,
    split: Mapping[str, np.ndarray],
    pca: Mapping[str, np.ndarray],
    spectra: np.ndarray | None = None,
) -> str:
    """The fingerprint of prepared data, after checking that ``meta.json`` (written last by
    ``prepare``) records the fingerprint of exactly these arrays: files from two different or
    interrupted ``prepare`` runs are refused instead of mixed."""
    actual = prepared_fingerprint(cube, labels, split, pca, spectra)
    recorded = meta.get("fingerprint")
    if recorded != actual:
        if not recorded:
            raise DataError(
                f"{where}/meta.json: records no data fingerprint (written by an older version or "
                "an interrupted `hsi prepare`); run `hsi prepare` (or `dvc repro`)"
            )
        raise DataError(
            f"{where}: meta.json records fingerprint {short(recorded)} but the arrays have "
            f"{short(actual)} (files of different or interrupted `hsi prepare` runs); "
            "run `hsi prepare` (or `dvc repro`)"
        )
    return actual


def check_recorded(path: str | os.PathLike, current: str | None, *, against: str, fix: str) -> None:
    """Like :func:`check_provenance` for a JSON output that records
    ``{"provenance": {"data_fingerprint": ...}}`` (e.g. evaluate's classification_report.json);
    a missing or unreadable file is refused too, naming ``fix``."""
    path = Path(path)
    try:
        recorded = json.loads(path.read_text()).get("provenance", {}).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        raise DataError(f"{path}: missing or unreadable; run `{fix}`") from None
    check_provenance(str(path), recorded, current, against=against, fix=fix)


def raw_fingerprint(manifest: Mapping[str, Any], crop: Any) -> str:
    """Fingerprint of a fetched raw scene as used: its cube and label files' sha256 and the crop
    (for outputs made from the raw cube, such as denoiser checkpoints)."""
    return fingerprint(
        {
            "cube_sha256": manifest["cube"]["sha256"],
            "gt_sha256": manifest["gt"]["sha256"],
            "crop": crop,
        }
    )


def check_same_file(
    what: str, recorded: str | None, actual: str | None, *, against: str, fix: str, thing: str
) -> None:
    """DataError unless ``what`` recorded the sha256 ``recorded`` of ``against`` (a ``thing``:
    checkpoint, scene map, raw cube ...) and that file now has ``actual`` (None: missing)."""
    if recorded and actual and recorded == actual:
        return
    if actual is None:
        raise DataError(f"{against}: missing (the {thing} {what} was made from); run `{fix}`")
    raise DataError(
        f"{what}: made from the {thing} {against} with sha256 {short(recorded)} but the file now "
        f"has {short(actual)}; run `{fix}` (or `dvc repro`) to rebuild it"
    )
