"""Verified, offline-first fetching of a catalogue dataset (or a user's own scene).

:func:`fetch_dataset` tries, per file: a local folder (``data_dir`` or ``$HSI_DATA_DIR``, also
its ``<name>/`` subfolder), then an installed package, then the public URLs listed in
:mod:`pipeline.data.registry`. Every file is verified before it is renamed into place, so offline
users can drop the original files into the local folder. The result is a folder with the files
and ``manifest.json`` (files, hashes, sources, shape, class names, palette, defaults), read back
by :func:`load_raw`.

Fetching is all or nothing: files are obtained and checked (hash, shapes, finite values, labels
matching the cube) in a temporary sibling folder that replaces the output folder only when
everything passed, so a failed fetch leaves the previous valid folder untouched. That folder is
made like a normal ``mkdir`` (its mode follows the umask, so others may read the data). A file
found in the local folder (``$HSI_DATA_DIR``) whose hash differs, or that is not a regular file,
is an error, never a reason to quietly take the file from another source. Errors name the
user's own files (custom data) or ``out_dir``, never the hidden staging folder.

The manifest records each file's sha256, size and mtime; :func:`load_raw` re-hashes a file whose
size or mtime differs and refuses one whose content changed since it was fetched.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.custom import ingest_custom, relabel
from pipeline.data.download import copy_verified, download, verify_file
from pipeline.data.loaders import load_cube, load_gt, shown_as
from pipeline.data.registry import DatasetInfo, FileSpec, get_dataset, normalise_name
from pipeline.errors import ChecksumError, DataError, ParamsError
from pipeline.io import output_error, pid_alive, regular_file, sha256_file, write_json

__all__ = [
    "DATA_DIR_ENV",
    "SOURCES",
    "fetch_dataset",
    "load_manifest",
    "load_raw",
    "verify_files",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SOURCES = ("auto", "local", "package", "url")
DATA_DIR_ENV = "HSI_DATA_DIR"
_MANIFEST_FIELDS = ("dataset", "cube", "gt", "shape", "class_names", "rgb_bands", "palette")


def fetch_dataset(
    name: str,
    out_dir: str | os.PathLike,
    *,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    custom: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Fetch dataset ``name`` into ``out_dir``, verify it, and write ``out_dir/manifest.json``.

    ``source`` is ``"auto"`` (local folder, then package, then URLs), ``"local"``,
    ``"package"`` or ``"url"``. The local folder is ``data_dir`` or ``$HSI_DATA_DIR``; a file
    is looked up there and in its ``<name>/`` subfolder. Files already in ``out_dir`` with the
    expected hash are kept. After fetching, cube and labels are loaded and their shapes checked
    against the registry. ``name="custom"`` copies the user's files given by ``custom`` (keys
    ``cube``, ``gt``, optional ``cube_key``, ``gt_key``, ``class_names``, ``title``,
    ``pca_components``, ``rgb_bands``, ``citation``, ``licence``). Returns the manifest.
    """
    if source not in SOURCES:
        raise ParamsError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(out_dir)
        stage = _make_stage(out_dir)
    except OSError as exc:
        raise output_error(out_dir, exc) from exc
    try:
        with shown_as({stage: out_dir}):
            manifest = _fetch_into(name, stage, out_dir, source, data_dir, custom, progress)
    except OSError as exc:
        if exc.filename is None or not _inside(Path(exc.filename), stage):
            raise
        raise output_error(out_dir / Path(exc.filename).relative_to(stage), exc) from exc
    else:
        try:
            _replace_dir(stage, out_dir)
        except OSError as exc:
            raise output_error(out_dir, exc) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _make_stage(out_dir: Path) -> Path:
    """A new empty hidden folder beside ``out_dir``, made like a normal ``mkdir`` (mode from the
    umask, unlike ``tempfile.mkdtemp``'s 0700), as it becomes ``out_dir``."""
    while True:
        stage = out_dir.parent / f".{out_dir.name}{_STAGING}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            stage.mkdir()
        except FileExistsError:
            continue
        return stage


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _fetch_into(
    name: str,
    stage: Path,
    out_dir: Path,
    source: str,
    data_dir: str | os.PathLike | None,
    custom: Mapping[str, Any] | None,
    progress: bool,
) -> dict:
    """Obtain and check every file in ``stage``; verified files already in ``out_dir`` are
    reused. Returns the manifest (also written into ``stage``)."""
    if normalise_name(name) == "custom":
        if custom is None:
            raise ParamsError("dataset 'custom' needs custom={'cube': path, 'gt': path, ...}")
        info, cube_rec, gt_rec = ingest_custom(custom, stage)
        unknown: list[str] = []
    else:
        if custom is not None:
            raise ParamsError(f"custom=... is only allowed with dataset 'custom', not {name!r}")
        info = get_dataset(name)
        local = _local_dir(data_dir, source)
        previous = _previous_manifest(out_dir)
        info, cube_rec, gt_rec = _fetch_registered(
            info, stage, source, local, previous, progress, reuse=out_dir
        )
        unknown = [spec.filename for spec in (info.cube, info.gt) if spec.sha256 is None]

    users = {}
    if normalise_name(name) == "custom":  # errors name the user's files, not the copies
        users = {
            stage / rec["file"]: rec["source"].removeprefix("local:")
            for rec in _file_records({"cube": cube_rec, "gt": gt_rec})
        }
    with shown_as(users):
        cube = load_cube(stage / cube_rec["file"], cube_rec["key"])
        gt = _labels(load_gt(stage / gt_rec["file"], gt_rec["key"]), gt_rec, stage)
        _check_arrays(info, cube, gt, stage)
    labels, counts = np.unique(gt[gt > 0], return_counts=True)

    manifest = {
        "dataset": info.name,
        "title": info.title,
        "licence": info.licence,
        "citation": info.citation,
        "class_names": list(info.class_names),
        "cube": cube_rec,
        "gt": gt_rec,
        "shape": list(info.shape),
        "dtype": str(cube.dtype),
        "pca_components": info.pca_components,
        "rgb_bands": list(info.rgb_bands),
        "palette": [list(c) for c in info.palette],
        "labelled_pixels": int(counts.sum()),
        "label_counts": {str(int(k)): int(v) for k, v in zip(labels, counts, strict=True)},
        "sha256_recorded_unknown": unknown,
    }
    write_json(stage / MANIFEST, manifest)
    return manifest


_STAGING = ".fetching-"


def _remove_abandoned(out_dir: Path) -> None:
    """Delete staging folders left by fetches that were killed (their process is gone)."""
    for path in out_dir.parent.glob(f".{out_dir.name}{_STAGING}*"):
        pid = path.name[len(f".{out_dir.name}{_STAGING}") :].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _replace_dir(stage: Path, out_dir: Path) -> None:
    """Put ``stage`` where ``out_dir`` is. Between the two renames ``out_dir`` is briefly absent
    (a crash there leaves no folder rather than a mix of old and new files)."""
    if out_dir.exists() or out_dir.is_symlink():
        old = stage.with_name(stage.name + ".old")
        os.replace(out_dir, old)
        os.replace(stage, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out_dir)


def _labels(gt: np.ndarray, gt_rec: Mapping[str, Any], where: Path) -> np.ndarray:
    """The label map as classes 1..N, when the record says how the file's values map to them."""
    if "label_values" not in gt_rec:
        return gt
    return relabel(
        gt, gt_rec["label_values"], gt_rec.get("ignore_labels", ()), where / gt_rec["file"]
    )


def load_manifest(out_dir: str | os.PathLike) -> dict:
    """Read ``out_dir/manifest.json`` written by :func:`fetch_dataset`."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run fetch_dataset (the 'fetch' stage) first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest: {exc}") from exc
    for field in _MANIFEST_FIELDS:
        if field not in manifest:
            raise DataError(
                f"{path}: manifest lacks the field {field!r}; run the 'fetch' stage again"
            )
    return manifest


def load_raw(
    out_dir: str | os.PathLike, crop: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load ``(cube H×W×B, gt H×W integer, manifest)`` from a fetched dataset folder.

    Each file is first checked against the sha256 the manifest recorded at fetch time (see
    :func:`verify_files`). ``crop`` = ``[row0, row1, col0, col1]`` (``dataset.crop``) cuts both
    to that window, the one place the pipeline crops a scene; a window reaching beyond the scene
    is refused rather than clipped.
    """
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    verify_files(out_dir, manifest)
    cube_path = out_dir / manifest["cube"]["file"]
    window = _crop_window(crop, manifest["shape"], cube_path) if crop else None
    cube = load_cube(cube_path, manifest["cube"].get("key"))
    gt = _labels(
        load_gt(out_dir / manifest["gt"]["file"], manifest["gt"].get("key")),
        manifest["gt"],
        out_dir,
    )
    if list(cube.shape) != list(manifest["shape"]) or gt.shape != cube.shape[:2]:
        raise DataError(
            f"{out_dir}: cube {cube.shape} / gt {gt.shape} do not match the manifest shape "
            f"{tuple(manifest['shape'])}; fetch the dataset again"
        )
    if window:
        cube, gt = cube[window], gt[window]
    return cube, gt, manifest


def verify_files(out_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """ChecksumError unless every file of the manifest (cube, labels, companions) still has the
    sha256 recorded when it was fetched. Every file is hashed (10 ms for the 8.4 MB Indian
    Pines cube, so about 0.15 s for Pavia Centre's 130 MB): a size-and-mtime shortcut would need
    the mtime in the manifest, which DVC tracks, and an mtime differs on every machine."""
    out_dir = Path(out_dir)
    for rec in _file_records(manifest):
        path = regular_file(out_dir / rec["file"])
        recorded = str(rec.get("sha256") or "").lower()
        if not recorded:
            continue
        actual = sha256_file(path)
        if actual != recorded:
            raise ChecksumError(
                f"{path}: changed since it was fetched: sha256 {actual}, but "
                f"{out_dir / MANIFEST} records {recorded}; run `hsi fetch` (or `dvc repro`) to "
                "fetch it again"
            )


def _file_records(manifest: Mapping[str, Any]) -> list[dict]:
    """The manifest's records of the cube, the labels and their companions (ENVI files)."""
    out = []
    for part in ("cube", "gt"):
        rec = manifest[part]
        out += [rec, *rec.get("companions", ())]
    return out


def _crop_window(crop: Sequence[int], shape: Sequence[int], where: Path) -> tuple[slice, slice]:
    """The rows and columns ``dataset.crop`` selects; DataError unless they lie in the scene."""
    h, w = int(shape[0]), int(shape[1])
    r0, r1, c0, c1 = (int(v) for v in crop)
    scene = f"{h}×{w} scene ({where})"
    if min(r0, r1, c0, c1) < 0:
        raise DataError(
            f"'dataset.crop' = {list(crop)} has negative values; the {scene} has "
            f"rows 0..{h} and columns 0..{w}"
        )
    if r0 >= min(r1, h) or c0 >= min(c1, w):
        raise DataError(f"'dataset.crop' = {list(crop)} leaves nothing of the {scene}")
    if r1 > h or c1 > w:
        raise DataError(
            f"'dataset.crop' = {list(crop)} reaches beyond the {scene}: rows must lie in "
            f"0..{h} and columns in 0..{w}; nothing is clipped silently"
        )
    return slice(r0, r1), slice(c0, c1)


def _local_dir(data_dir: str | os.PathLike | None, source: str) -> Path | None:
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise DataError(f"data_dir {path} does not exist or is not a directory")
        return path
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env)
        if path.is_dir():
            return path
        raise DataError(
            f"${DATA_DIR_ENV}={env} is not a directory; fix or unset it (the data would "
            "otherwise silently come from another source)"
        )
    if source == "local":
        raise ParamsError(f"source='local' needs data_dir=... or the ${DATA_DIR_ENV} variable")
    return None


def _previous_manifest(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _fetch_registered(
    info: DatasetInfo,
    out_dir: Path,
    source: str,
    local: Path | None,
    previous: dict,
    progress: bool,
    reuse: Path | None = None,
) -> tuple[DatasetInfo, dict, dict]:
    pairs = [(info.cube, info.gt), *info.alternatives]
    failures: list[DataError] = []
    for cube_spec, gt_spec in pairs:
        written: list[Path] = []
        try:
            recs = [
                _obtain(spec, info.name, out_dir, source, local, previous, progress, written, reuse)
                for spec in (cube_spec, gt_spec)
            ]
        except LocalFileUnusable:
            raise
        except DataError as exc:
            failures.append(exc)
            for path in written:
                path.unlink(missing_ok=True)
            continue
        return replace(info, cube=cube_spec, gt=gt_spec), recs[0], recs[1]
    where = f"${DATA_DIR_ENV} or data_dir" + (f" (now {local})" if local else "")
    error = ChecksumError if all(isinstance(e, ChecksumError) for e in failures) else DataError
    raise error(
        f"could not fetch dataset {info.name!r} with source={source!r}:\n  - "
        + "\n  - ".join(map(str, failures))
        + f"\nTo work offline, put the original files into {where} or its {info.name}/ "
        "subfolder; they are verified against the registry's size and sha256."
    )


def _obtain(
    spec: FileSpec,
    dataset: str,
    out_dir: Path,
    source: str,
    local: Path | None,
    previous: dict,
    progress: bool,
    written: list[Path],
    reuse: Path | None = None,
) -> dict:
    dest = out_dir / spec.filename
    prev = _previous_record(previous, spec.filename)
    expected = spec.sha256 or prev.get("sha256")
    old = (reuse or out_dir) / spec.filename
    if old.is_file() and expected:
        try:
            digest = verify_file(old, sha256=expected, size=spec.size)
        except ChecksumError as exc:
            log.info("%s; fetching it again", exc)
        else:
            if old != dest:
                _link_or_copy(old, dest)
                written.append(dest)
            return _record(spec, digest, dest, prev.get("source", "existing"))

    candidates = _candidates(spec, dataset, source, local, progress)
    if not candidates:
        raise DataError(f"{spec.filename}: no {source!r} source available for this file")
    errors: list[DataError] = []
    for label, action in candidates:
        try:
            digest = action(dest)
        except ChecksumError as exc:
            if label.startswith("local:"):
                what, _, rest = str(exc).partition(" for ")
                raise LocalFileMismatch(
                    f"{label[len('local:') :]}: {what} ({rest.rpartition(': ')[2]}); this local "
                    f"copy is not the expected {spec.filename}. "
                    f"Replace or remove it (or unset ${DATA_DIR_ENV}); no other source is tried "
                    "so that the data never silently come from somewhere else"
                ) from None
            errors.append(exc)
            log.warning("%s: %s failed: %s", spec.filename, label, exc)
            continue
        except DataError as exc:
            errors.append(exc)
            log.warning("%s: %s failed: %s", spec.filename, label, exc)
            continue
        written.append(dest)
        if spec.sha256 is None and not label.startswith("url:"):
            log.warning("sha256 unknown; recorded %s for %s (from %s)", digest, dest, label)
        return _record(spec, digest, dest, label)
    error = ChecksumError if all(isinstance(e, ChecksumError) for e in errors) else DataError
    raise error(f"{spec.filename}: every source failed ({'; '.join(map(str, errors))})")


def _candidates(
    spec: FileSpec, dataset: str, source: str, local: Path | None, progress: bool
) -> list[tuple[str, Callable[[Path], str]]]:
    out: list[tuple[str, Callable[[Path], str]]] = []

    def copier(src: Path) -> Callable[[Path], str]:
        return lambda dest: copy_verified(src, dest, sha256=spec.sha256, size=spec.size)

    if source in ("auto", "local") and local is not None:
        for base in (local, local / dataset):
            for fname in (spec.filename, *spec.aliases):
                path = base / fname
                if path.exists():
                    _usable_local(path, spec)
                    out.append((f"local:{path}", copier(path)))
        if source == "local" and not out:
            raise DataError(
                f"{spec.filename}: not found in {local} or {local / dataset} "
                f"(names tried: {', '.join((spec.filename, *spec.aliases))})"
            )
    if source in ("auto", "package") and spec.package_path:
        try:
            path, label = _package_file(spec.package_path)
        except DataError as exc:
            if source == "package":
                raise
            log.info("%s", exc)
        else:
            out.append((label, copier(path)))
    if source in ("auto", "url"):
        for url in spec.urls:
            out.append(
                (
                    f"url:{url}",
                    lambda dest, url=url: download(
                        url, dest, sha256=spec.sha256, size=spec.size, progress=progress
                    ),
                )
            )
    return out


class LocalFileUnusable(DataError):
    """A file in the local data folder exists but cannot be used; no other source is tried."""


class LocalFileMismatch(ChecksumError, LocalFileUnusable):
    """A file in the local data folder exists but is not the expected one."""


def _usable_local(path: Path, spec: FileSpec) -> None:
    try:
        regular_file(path)
    except DataError as exc:
        raise LocalFileUnusable(
            f"{exc}; this local copy of {spec.filename} cannot be used. Replace or remove it (or "
            f"unset ${DATA_DIR_ENV}); no other source is tried"
        ) from None


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link ``src`` to ``dest``, else copy it (mode from the umask, like a new file; mtime
    kept)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
        st = src.stat()
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))


def _package_file(package_path: str) -> tuple[Path, str]:
    """Locate ``"pkg:rel/path"`` inside an installed package without importing it."""
    pkg, _, rel = package_path.partition(":")
    try:
        found = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise DataError(f"{package_path}: package {pkg!r} is not installed")
    try:
        version = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    for base in found.submodule_search_locations:
        path = Path(base) / rel
        if path.is_file():
            return path, f"package:{pkg}=={version}:{pkg}/{rel}"
    raise DataError(f"{package_path}: {rel} not found in package {pkg} {version}")


def _previous_record(previous: dict, filename: str) -> dict:
    for part in ("cube", "gt"):
        rec = previous.get(part)
        if isinstance(rec, dict) and rec.get("file") == filename:
            return rec
    return {}


def _record(spec: FileSpec, digest: str, path: Path, source: str) -> dict:
    st = path.stat()
    return {
        "file": spec.filename,
        "key": spec.key,
        "sha256": digest,
        "size": st.st_size,
        "source": source,
    }


def _check_arrays(info: DatasetInfo, cube: np.ndarray, gt: np.ndarray, out_dir: Path) -> None:
    where = f"{out_dir / info.cube.filename}"
    if np.issubdtype(cube.dtype, np.floating) and not np.isfinite(cube).all():
        bad = ~np.isfinite(cube)
        r, c, b = np.argwhere(bad)[0]
        raise DataError(
            f"{where}: {int(bad.sum())} NaN/Inf values (first at row {r}, col {c}, band {b}); "
            "nothing was written"
        )
    if tuple(cube.shape) != tuple(info.shape):
        raise DataError(
            f"{where}: cube shape {cube.shape} differs from the expected {tuple(info.shape)} "
            f"for dataset {info.name!r}"
        )
    if gt.shape != cube.shape[:2]:
        raise DataError(
            f"{out_dir / info.gt.filename}: label map shape {gt.shape} does not match the cube's "
            f"spatial shape {cube.shape[:2]}"
        )
    if gt.size and (int(gt.min()) < 0 or int(gt.max()) > len(info.class_names)):
        raise DataError(
            f"{out_dir / info.gt.filename}: labels span {int(gt.min())}..{int(gt.max())} but "
            f"dataset {info.name!r} has {len(info.class_names)} class names (labels 0..N)"
        )
