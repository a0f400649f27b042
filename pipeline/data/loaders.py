"""Read hyperspectral cubes and label maps from MATLAB (v5 and v7.3), NumPy and ENVI files.

Every failure (missing file, unknown key, ambiguous content, corrupt bytes) is reported as a
:class:`~pipeline.errors.DataError` that names the file, never as a raw scipy/h5py traceback.
The format is recognised from the file's content (magic bytes), the extension is only a hint.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, PipelineError
from pipeline.io import regular_file

__all__ = [
    "detect_format",
    "list_keys",
    "load_array",
    "load_cube",
    "load_gt",
    "resolve_key",
    "shown_as",
]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)
_NPY_MAGIC = b"\x93NUMPY"
_MAT5_NUMERIC = {
    "double",
    "single",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "logical",
}
_ENVI_DATA_EXTS = ("", ".img", ".raw", ".dat", ".bin", ".bsq", ".bil", ".bip")


@dataclass(frozen=True)
class _Entry:
    shape: tuple[int, ...]
    kind: str  # MATLAB class or numpy dtype name
    numeric: bool


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"npy"``, ``"mat5"``, ``"mat73"`` or ``"envi"`` for ``path``, judged by content."""
    path = _existing(path)
    if path.suffix.lower() == ".hdr":
        return "envi"
    try:
        with open(path, "rb") as f:
            head = f.read(128)
            if head.startswith(_NPY_MAGIC):
                return "npy"
            for off in _HDF5_OFFSETS:
                f.seek(off)
                if f.read(8) == _HDF5_SIGNATURE:
                    return "mat73"
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc
    if head.startswith(b"ENVI"):
        return "envi"
    if head.startswith(b"MATLAB"):
        return "mat5"
    if _envi_header_for(path) is not None:
        return "envi"
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "mat5"  # MATLAB v4 files have no text header
    if suffix == ".npy":
        raise DataError(f"{path}: not a valid .npy file (missing NumPy magic bytes)")
    raise DataError(
        f"{path}: unrecognised file format; expected a MATLAB .mat (v5 or v7.3), "
        "a NumPy .npy or an ENVI .hdr with its data file"
    )


def list_keys(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Map each array stored in ``path`` to its shape (as :func:`load_array` would return it).

    For single-array formats (.npy, ENVI) the one entry is named after the file.
    """
    return {name: e.shape for name, e in _inspect(Path(path)).items()}


def resolve_key(
    path: str | os.PathLike, key: str | None = None, *, ndim: int | None = None
) -> str | None:
    """Return the .mat key :func:`load_array` would read (``None`` for .npy and ENVI files)."""
    path = _existing(path)
    fmt = detect_format(path)
    if fmt not in ("mat5", "mat73"):
        return None
    return _choose_mat_key(path, fmt, _inspect(path, fmt), key, ndim)


def load_array(
    path: str | os.PathLike, key: str | None = None, *, ndim: int | None = None
) -> np.ndarray:
    """Load one numeric array from a .mat (v5/v7.3), .npy or ENVI file.

    For .mat files without ``key``, the only numeric array with ``ndim`` dimensions is used;
    zero or several candidates raise :class:`DataError` listing the keys found. ``key`` is
    ignored for single-array formats. v7.3 arrays are transposed so they equal what
    ``scipy.io.loadmat`` gives for the same data. An ENVI image with one band loaded with
    ``ndim=2`` is returned as H×W. A .mat cube stored flattened (bands × pixels or pixels ×
    bands) with scalars ``nRow`` and ``nCol``, as the Jasper Ridge, Samson and Urban files are,
    is reshaped to H×W×B (pixels in MATLAB's column order).
    """
    path = _existing(path)
    fmt = detect_format(path)
    if fmt in ("mat5", "mat73"):
        entries = _inspect(path, fmt)
        key = _choose_mat_key(path, fmt, entries, key, ndim)
        arr = _read_mat(path, fmt, key)
        if ndim == 3 and arr.ndim == 2:
            arr = _unflatten(path, fmt, entries, key, arr)
    elif fmt == "npy":
        arr = _read_npy(path)
    else:
        arr = _read_envi(path)
        if ndim == 2 and arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path}{_kdesc(key)}: expected a numeric array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise DataError(
            f"{path}{_kdesc(key)}: expected a {ndim}-D array, got shape {tuple(arr.shape)}"
        )
    return arr


def load_cube(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Load a hyperspectral cube as an H×W×B array."""
    return load_array(path, key, ndim=3)


def load_gt(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Load a label map as an H×W integer array (0 = unlabelled).

    Float maps holding only integral values are cast; anything else raises DataError.
    """
    gt = load_array(path, key, ndim=2)
    if gt.dtype.kind == "b":
        return gt.astype(np.uint8)
    if gt.dtype.kind in "iu":
        return gt
    if not np.all(np.isfinite(gt)):
        raise DataError(f"{path}{_kdesc(key)}: label map contains NaN or infinite values")
    if not np.array_equal(gt, np.round(gt)):
        raise DataError(f"{path}{_kdesc(key)}: label map has non-integral values")
    lo, hi = (float(gt.min()), float(gt.max())) if gt.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return gt.astype(dtype)
    raise DataError(f"{path}{_kdesc(key)}: label values out of integer range [{lo}, {hi}]")


@contextlib.contextmanager
def shown_as(names: Mapping[str | os.PathLike, str | os.PathLike]) -> Iterator[None]:
    """Errors raised inside the block name each path of ``names`` (e.g. a copy in a hidden
    staging folder) as its value (the file the user knows); a folder key renames what is in it."""
    try:
        yield
    except PipelineError as exc:
        if len(exc.args) == 1 and isinstance(exc.args[0], str):
            text = exc.args[0]
            pairs = sorted(((str(k), str(v)) for k, v in names.items()), key=lambda p: -len(p[0]))
            for old, new in pairs:
                text = re.sub(re.escape(old) + r"(?![\w.-])", lambda _m, new=new: new, text)
            exc.args = (text,)
        raise


def _existing(path: str | os.PathLike) -> Path:
    return regular_file(path)


def _kdesc(key: str | None) -> str:
    return f" (key {key!r})" if key else ""


def _describe(entries: dict[str, _Entry]) -> str:
    if not entries:
        return "no arrays"
    return ", ".join(f"{name!r} {e.shape} {e.kind}" for name, e in entries.items())


def _inspect(path: Path, fmt: str | None = None) -> dict[str, _Entry]:
    path = _existing(path)
    fmt = fmt or detect_format(path)
    if fmt == "mat5":
        try:
            return _inspect_mat5(path)
        except NotImplementedError:
            return _inspect_mat73(path)
    if fmt == "mat73":
        return _inspect_mat73(path)
    if fmt == "npy":
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except Exception as exc:
            raise DataError(f"{path}: corrupt .npy header: {exc}") from exc
        return {path.stem: _Entry(tuple(shape), dtype.name, dtype.kind in "biuf")}
    img = _open_envi(path)
    dtype = np.dtype(img.dtype)
    return {path.stem: _Entry((img.nrows, img.ncols, img.nbands), dtype.name, True)}


def _inspect_mat5(path: Path) -> dict[str, _Entry]:
    import scipy.io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = scipy.io.whosmat(str(path), appendmat=False)
    except NotImplementedError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: corrupt or unreadable MATLAB file: {exc}") from exc
    return {
        name: _Entry(tuple(int(s) for s in shape), cls, cls in _MAT5_NUMERIC)
        for name, shape, cls in info
        if not name.startswith("__")
    }


def _inspect_mat73(path: Path) -> dict[str, _Entry]:
    import h5py

    entries: dict[str, _Entry] = {}
    try:
        with h5py.File(path, "r") as f:
            for name, obj in f.items():
                if name.startswith(("#", "__")):
                    continue
                if isinstance(obj, h5py.Group):
                    cls = _attr_str(obj.attrs.get("MATLAB_class", b"struct"))
                    entries[name] = _Entry((), cls, False)
                    continue
                cls = _attr_str(obj.attrs.get("MATLAB_class", obj.dtype.name))
                numeric = (
                    obj.dtype.kind in "biuf"
                    and cls not in ("char", "cell", "struct", "function_handle")
                    and "MATLAB_empty" not in obj.attrs
                )
                entries[name] = _Entry(tuple(int(s) for s in obj.shape[::-1]), cls, numeric)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: corrupt or unreadable MATLAB v7.3 (HDF5) file: {exc}") from exc
    return entries


def _attr_str(value: object) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("ascii", "replace")
    return str(value)


def _choose_key(path: Path, entries: dict[str, _Entry], key: str | None, ndim: int | None) -> str:
    if key is not None:
        if key not in entries:
            raise DataError(f"{path}: key {key!r} not found; keys found: {_describe(entries)}")
        entry = entries[key]
        if not entry.numeric:
            raise DataError(f"{path}: key {key!r} holds a {entry.kind}, not a numeric array")
        return key
    candidates = [
        name for name, e in entries.items() if e.numeric and (ndim is None or len(e.shape) == ndim)
    ]
    if len(candidates) == 1:
        return candidates[0]
    what = f"numeric {ndim}-D arrays" if ndim else "numeric arrays"
    problem = "no" if not candidates else f"{len(candidates)}"
    raise DataError(
        f"{path}: cannot pick the array automatically ({problem} {what}); pass a key. "
        f"Keys found: {_describe(entries)}"
    )


def _read_mat(path: Path, fmt: str, key: str) -> np.ndarray:
    return _read_mat5(path, key) if fmt == "mat5" else _read_mat73(path, key)


def _flat_dims(path: Path, fmt: str, entries: dict[str, _Entry]) -> tuple[int, int] | None:
    """``(nRow, nCol)`` when the file stores them as numeric scalars (names case-insensitive)."""
    names = {k.lower(): k for k, e in entries.items() if e.numeric and int(np.prod(e.shape)) == 1}
    if "nrow" not in names or "ncol" not in names:
        return None
    rows, cols = (int(_read_mat(path, fmt, names[n]).ravel()[0]) for n in ("nrow", "ncol"))
    return (rows, cols) if rows > 0 and cols > 0 else None


def _choose_mat_key(
    path: Path, fmt: str, entries: dict[str, _Entry], key: str | None, ndim: int | None
) -> str:
    """:func:`_choose_key`, where a cube (``ndim=3``) may also be a flattened 2-D array whose
    pixel count is ``nRow × nCol``."""
    try:
        return _choose_key(path, entries, key, ndim)
    except DataError:
        if ndim != 3 or key is not None:
            raise
        dims = _flat_dims(path, fmt, entries)
        flat = [
            name
            for name, e in entries.items()
            if e.numeric and len(e.shape) == 2 and dims and dims[0] * dims[1] in e.shape
        ]
        if len(flat) != 1:
            raise
        return flat[0]


def _unflatten(
    path: Path, fmt: str, entries: dict[str, _Entry], key: str | None, arr: np.ndarray
) -> np.ndarray:
    """A flattened cube (B × nRow·nCol or nRow·nCol × B, MATLAB column order) → H×W×B."""
    where = f"{path}{_kdesc(key)}"
    dims = _flat_dims(path, fmt, entries)
    if dims is None:
        raise DataError(
            f"{where}: a 2-D {tuple(arr.shape)} array, not an H×W×bands cube. If it is a "
            "flattened cube (bands × pixels), store its size as scalars 'nRow' and 'nCol' in "
            "the same .mat (pixels in MATLAB column order), or save the cube as H×W×bands"
        )
    rows, cols = dims
    n = rows * cols
    if arr.shape[1] == n:
        flat = arr
    elif arr.shape[0] == n:
        flat = arr.T
    else:
        raise DataError(
            f"{where}: a 2-D {tuple(arr.shape)} array but nRow × nCol = {rows} × {cols} = {n} "
            "pixels; neither dimension matches, so it cannot be reshaped to H×W×bands"
        )
    return np.ascontiguousarray(flat.reshape(flat.shape[0], cols, rows).transpose(2, 1, 0))


def _read_mat5(path: Path, key: str) -> np.ndarray:
    import scipy.io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = scipy.io.loadmat(str(path), variable_names=[key], appendmat=False)
    except NotImplementedError:
        return _read_mat73(path, key)
    except Exception as exc:
        raise DataError(f"{path}: corrupt or unreadable MATLAB file: {exc}") from exc
    if key not in data:
        raise DataError(f"{path}: key {key!r} could not be read")
    return np.asarray(data[key])


def _read_mat73(path: Path, key: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            arr = np.asarray(f[key][()])
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read key {key!r} from MATLAB v7.3 (HDF5) file: {exc}"
        ) from exc
    return arr.T


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: corrupt or unreadable .npy file: {exc}") from exc


def _envi_header_for(path: Path) -> Path | None:
    if path.suffix.lower() == ".hdr":
        return path
    for cand in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if cand != path and cand.exists():
            return regular_file(cand)
    return None


def _open_envi(path: Path):
    import spectral.io.envi as envi

    hdr = _envi_header_for(path)
    if hdr is None:
        raise DataError(f"{path}: no ENVI header (.hdr) found next to it")
    image = None
    if path != hdr:
        image = str(path)
    else:
        stem = hdr.with_suffix("")
        image = next(
            (
                str(c)
                for ext in _ENVI_DATA_EXTS
                for c in (Path(str(stem) + ext), Path(str(stem) + ext.upper()))
                if c.exists() and regular_file(c)
            ),
            None,
        )
        if image is None:
            raise DataError(
                f"{hdr}: ENVI data file not found (looked for {stem.name} with extensions "
                f"{', '.join(e or '(none)' for e in _ENVI_DATA_EXTS)})"
            )
    try:
        return envi.open(str(hdr), image)
    except Exception as exc:
        raise DataError(f"{hdr}: cannot open ENVI image: {exc}") from exc


def _read_envi(path: Path) -> np.ndarray:
    img = _open_envi(path)
    expected = img.nrows * img.ncols * img.nbands * np.dtype(img.dtype).itemsize + img.offset
    actual = os.path.getsize(img.filename)
    if actual < expected:
        raise DataError(
            f"{img.filename}: ENVI data file is truncated ({actual} bytes, header implies "
            f"{expected})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = img.load(dtype=img.dtype, scale=False)
    except Exception as exc:
        raise DataError(f"{img.filename}: cannot read ENVI data: {exc}") from exc
    arr = np.array(arr)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)
