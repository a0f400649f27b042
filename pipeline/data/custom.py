"""A user's own scene (``dataset.name: custom``): copy cube and label map, fill in defaults.

The files are copied verbatim (with an ENVI image's header or data file); the scene then gets
the same kind of record as a catalogue entry, with the registry's default palette and RGB bands
where the user gives none.

Labels: the positive values present in the map (e.g. Salinas-A's 1, 10, 11, 12, 13, 14) become
classes 1..N in increasing order; the gt record keeps ``label_values`` (class k ↔ file value
``label_values[k-1]``) so :func:`relabel` maps the file the same way wherever it is read, and a
renumbered class's name carries its file value. A value that looks like no-data (negative, 255,
32767, 65535, …) is an error unless ``ignore_labels`` lists it; listed values become unlabelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.download import copy_verified
from pipeline.data.loaders import (
    _envi_header_for,
    _open_envi,
    load_cube,
    load_gt,
    resolve_key,
    shown_as,
)
from pipeline.data.registry import DatasetInfo, FileSpec, default_palette, default_rgb_bands
from pipeline.errors import DataError, ParamsError
from pipeline.io import regular_file

__all__ = ["CUSTOM_KEYS", "NODATA_VALUES", "ingest_custom", "relabel"]

# The keys of ``dataset.custom`` in params.yaml (the schema in pipeline/params.py holds the same).
CUSTOM_KEYS = frozenset(
    {
        "cube",
        "gt",
        "cube_key",
        "gt_key",
        "class_names",
        "title",
        "pca_components",
        "rgb_bands",
        "citation",
        "licence",
        "ignore_labels",
    }
)

NODATA_VALUES = frozenset({255, 32767, 65535, 2**31 - 1, 2**32 - 1})
"""Label values that usually mark missing data (besides negative ones)."""


def ingest_custom(custom: Mapping[str, Any], out_dir: Path) -> tuple[DatasetInfo, dict, dict]:
    """Copy the user's cube and label map (and ENVI companions) into ``out_dir``.

    Returns the scene's :class:`DatasetInfo` (defaults filled in as for a catalogue entry) and
    the manifest records of the cube and label files (each file with its ``source`` and size).
    Errors name the user's files, never the copies in ``out_dir``.
    """
    extra = set(custom) - CUSTOM_KEYS
    if extra:
        raise ParamsError(
            f"custom: unknown keys {sorted(extra)}; allowed: {', '.join(sorted(CUSTOM_KEYS))}"
        )
    for part in ("cube", "gt"):
        if not custom.get(part):
            raise ParamsError(f"custom: '{part}' (path to the file) is required")

    copied: dict[str, tuple[Path, str]] = {}  # output name -> (source file, sha256)
    shown: dict[Path, Path] = {}  # copy in out_dir -> the user's file
    records: dict[str, dict] = {}
    for part, ndim in (("cube", 3), ("gt", 2)):
        src = Path(custom[part])
        key = resolve_key(src, custom.get(f"{part}_key"), ndim=ndim)
        entries = []
        for f in _custom_files(src):
            dest = out_dir / f.name
            if f.name in copied:
                if copied[f.name][0] != f.resolve():
                    raise ParamsError(
                        f"custom: two different files are both named {f.name!r}; rename one"
                    )
            else:
                copied[f.name] = (f.resolve(), copy_verified(f, dest))
                shown[dest] = f
            st = dest.stat()
            entries.append(
                {
                    "file": f.name,
                    "sha256": copied[f.name][1],
                    "size": st.st_size,
                    "source": f"local:{f}",
                }
            )
        records[part] = {**entries[0], "key": key}
        if len(entries) > 1:
            records[part]["companions"] = entries[1:]

    with shown_as(shown):
        cube = load_cube(out_dir / records["cube"]["file"], records["cube"]["key"])
        gt_file = out_dir / records["gt"]["file"]
        gt = load_gt(gt_file, records["gt"]["key"])
    bands = cube.shape[2]
    if gt.shape != cube.shape[:2]:
        raise DataError(
            f"{custom['gt']}: label map shape {gt.shape} does not match the cube's spatial "
            f"shape {cube.shape[:2]} ({custom['cube']})"
        )
    ignore = [int(v) for v in custom.get("ignore_labels") or []]
    values = _label_values(gt, ignore, Path(custom["gt"]))
    names = _class_names(custom.get("class_names"), values)
    records["gt"]["label_values"] = values
    records["gt"]["ignore_labels"] = ignore
    relabel(gt, values, ignore, custom["gt"])  # the same mapping load_raw applies
    rgb = custom.get("rgb_bands") or default_rgb_bands(bands)
    if len(rgb) != 3 or not all(0 <= int(b) < bands for b in rgb):
        raise ParamsError(f"custom: rgb_bands must be 3 band indices in 0..{bands - 1}; got {rgb}")
    info = DatasetInfo(
        name="custom",
        title=custom.get("title") or f"custom dataset ({Path(custom['cube']).name})",
        class_names=tuple(str(n) for n in names),
        cube=FileSpec(records["cube"]["file"], records["cube"]["key"], None, None),
        gt=FileSpec(records["gt"]["file"], records["gt"]["key"], None, None),
        shape=tuple(int(s) for s in cube.shape),
        pca_components=int(custom.get("pca_components") or min(30, bands)),
        rgb_bands=tuple(int(b) for b in rgb),
        palette=default_palette(len(names)),
        citation=custom.get("citation") or "user-supplied data",
        licence=custom.get("licence") or "unknown (user-supplied data)",
    )
    return info, records["cube"], records["gt"]


def _label_values(gt: np.ndarray, ignore: list[int], where: Path) -> list[int]:
    """The positive label values present, after refusing no-data-looking values not ignored."""
    present = np.unique(gt)
    suspicious = [int(v) for v in present if (v < 0 or int(v) in NODATA_VALUES)]
    for v in suspicious:
        if v not in ignore:
            n = int((gt == v).sum())
            raise DataError(
                f"{where}: label value {v} ({n} pixels) looks like a no-data value, not a class; "
                f"list it in 'dataset.custom.ignore_labels' to treat those pixels as unlabelled"
            )
    values = [int(v) for v in present if v > 0 and int(v) not in ignore]
    if not values:
        raise DataError(f"{where}: no labelled pixels (every value is 0 or ignored)")
    return values


def _class_names(names: list[str] | None, values: list[int]) -> list[str]:
    """One name per class: given for the labels present (in increasing order) or for every label
    1..max; a renumbered class's name shows its value in the file."""
    renumbered = values != list(range(1, len(values) + 1))
    if names is None:
        return [f"class {v}" for v in values]
    if len(names) == len(values):
        chosen = list(names)
    elif len(names) == values[-1]:
        chosen = [names[v - 1] for v in values]
    else:
        raise ParamsError(
            f"custom: {len(names)} class_names given but the label map has {len(values)} labels "
            f"({', '.join(map(str, values))}); give one name per label present, in increasing "
            f"label order, or one per label 1..{values[-1]}"
        )
    return [f"{n} ({v})" for n, v in zip(chosen, values, strict=True)] if renumbered else chosen


def relabel(
    gt: np.ndarray, label_values: list[int], ignore=(), where: Path | str = "label map"
) -> np.ndarray:
    """Map the file's label values to classes 1..N (``label_values[k-1]`` → k); ignored values
    and 0 become 0. Any other value is a DataError (the file is not the one that was fetched)."""
    out = np.zeros(gt.shape, np.int64)
    known = np.isin(gt, [0, *ignore])
    for k, v in enumerate(label_values, start=1):
        hit = gt == v
        out[hit] = k
        known |= hit
    if not known.all():
        odd = sorted({int(v) for v in np.unique(gt[~known])})[:5]
        raise DataError(
            f"{where}: label values {odd} are not among the recorded classes "
            f"{label_values}; fetch the dataset again"
        )
    return out


def _custom_files(src: Path) -> list[Path]:
    """The file to copy first, then companions (an ENVI image's header or data file)."""
    regular_file(src)
    hdr = _envi_header_for(src)
    if hdr is None:
        return [src]
    data = Path(_open_envi(src).filename)
    return [src, data if src == hdr else hdr]
