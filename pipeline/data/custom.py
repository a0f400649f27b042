"""A user's own scene (``dataset.name: custom``): copy cube and label map, fill in defaults.

The files are copied verbatim (with an ENVI image's header or data file); the scene then gets
the same kind of record as a catalogue entry, with the registry's default palette and RGB bands
where the user gives none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.data.download import copy_verified
from pipeline.data.loaders import _envi_header_for, _open_envi, load_cube, load_gt, resolve_key
from pipeline.data.registry import DatasetInfo, FileSpec, default_palette, default_rgb_bands
from pipeline.errors import DataError, ParamsError

__all__ = ["CUSTOM_KEYS", "ingest_custom"]

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
    }
)


def ingest_custom(custom: Mapping[str, Any], out_dir: Path) -> tuple[DatasetInfo, dict, dict]:
    """Copy the user's cube and label map (and ENVI companions) into ``out_dir``.

    Returns the scene's :class:`DatasetInfo` (defaults filled in as for a catalogue entry) and
    the manifest records of the cube and label files.
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
            entries.append({"file": f.name, "sha256": copied[f.name][1], "size": f.stat().st_size})
        first = entries[0]
        records[part] = {
            "file": first["file"],
            "key": key,
            "sha256": first["sha256"],
            "size": first["size"],
            "source": f"local:{src}",
        }
        if len(entries) > 1:
            records[part]["companions"] = entries[1:]

    cube = load_cube(out_dir / records["cube"]["file"], records["cube"]["key"])
    gt = load_gt(out_dir / records["gt"]["file"], records["gt"]["key"])
    bands = cube.shape[2]
    n_classes = int(gt.max()) if gt.size else 0
    names = custom.get("class_names")
    if names is None:
        names = [f"class {i}" for i in range(1, n_classes + 1)]
    elif len(names) < n_classes:
        raise ParamsError(
            f"custom: {len(names)} class_names given but the label map uses labels up to "
            f"{n_classes}"
        )
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


def _custom_files(src: Path) -> list[Path]:
    """The file to copy first, then companions (an ENVI image's header or data file)."""
    if not src.is_file():
        raise DataError(f"{src}: file not found")
    hdr = _envi_header_for(src)
    if hdr is None:
        return [src]
    data = Path(_open_envi(src).filename)
    return [src, data if src == hdr else hdr]
