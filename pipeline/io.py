"""Atomic output writing and input file checks: a failure never leaves a half-written file behind.

Every output goes to a temp file beside its target, ``.<name>.<pid>.<random>.tmp<suffix>``, that
is renamed onto the target only when complete. A write that fails for a file-system reason (disk
full, read-only or unwritable folder, quota) raises :class:`OutputError`, one line naming the
target and the problem; the temp file is removed and the previous file is untouched. The temp
files of writers that were killed (their PID is no longer a live process) are removed by the
next write into the same folder.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, PipelineError

_UMASK = os.umask(0)
os.umask(_UMASK)

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large for the file system",
}
_HINTS = {
    errno.ENOSPC: "free some space there and run the stage again",
    errno.EDQUOT: "free some space or raise the quota and run the stage again",
    errno.EROFS: "remount it writable or run the pipeline from a writable copy",
    errno.EACCES: "make the folder writable for this user",
    errno.EPERM: "make the folder writable for this user",
}
_NEARLY_FULL = 1 << 20
"""Free bytes below which a writer's failure that carries no errno (torch.save raises
RuntimeError) is taken for a full disk."""

_TEMP = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.tmp[^/]*$")
"""A temp name of :func:`atomic_path`: the writer's PID, then tempfile's 8 random characters."""


class OutputError(PipelineError):
    """An output file or folder could not be written (disk full, read-only, no permission, …)."""


def os_error_reason(exc: OSError) -> str:
    """The problem an OSError reports, in words ("no space left on device")."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError not caught elsewhere: the file it names and the problem."""
    where = exc.filename if exc.filename is not None else "file system"
    hint = _HINTS.get(exc.errno) if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else None
    return f"{where}: {os_error_reason(exc)}" + (f"; {hint}" if hint else "")


def output_error(path: str | os.PathLike, exc: OSError | int) -> OutputError:
    """The :class:`OutputError` for writing ``path`` that failed with ``exc`` (or an errno)."""
    if isinstance(exc, int):
        exc = OSError(exc, os.strerror(exc))
    hint = _HINTS.get(exc.errno)
    return OutputError(
        f"{path}: cannot write: {os_error_reason(exc)}; the previous version (if any) is "
        f"unchanged" + (f"; {hint}" if hint else "")
    )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_orphans(folder: str | os.PathLike) -> None:
    """Delete the temp files in ``folder`` of writers that were killed (PID no longer alive)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    OutputError (naming ``path``) when the folder cannot be created or written, or the block's
    write fails for lack of space, permission or a read-only file system.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path.parent)
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix, dir=path.parent
        )
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as exc:
            if _about(exc, tmp, path):
                raise output_error(path, exc) from exc
            raise
        except PipelineError:
            raise
        except Exception as exc:
            problem = _full_or_read_only(path.parent)
            if problem:
                raise output_error(path, problem) from exc
            raise
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except OSError as exc:
            raise output_error(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def _about(exc: OSError, tmp: Path, path: Path) -> bool:
    """Whether an OSError raised inside the block is about writing the output (not, say, a
    network error of a download or an unreadable input, which keep their own message)."""
    if exc.filename is not None:
        return str(exc.filename) in (str(tmp), str(path))
    return exc.errno in _WRITE_ERRNOS


def _full_or_read_only(folder: Path) -> int | None:
    """EROFS or ENOSPC when ``folder``'s file system is read-only or (nearly) full, else None."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < _NEARLY_FULL:
        return errno.ENOSPC
    return None


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | os.PathLike, shown: str | os.PathLike | None = None) -> Path:
    """``path`` if it is a regular file (or a link to one), checked without opening it: a FIFO
    or device would block or never end. DataError naming ``shown`` (default ``path``)."""
    path = Path(path)
    shown = path if shown is None else shown
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{shown}: file not found") from None
    except OSError as exc:
        raise DataError(f"{shown}: cannot read: {os_error_reason(exc)}") from None
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _KINDS if test(mode)), "not a file")
        raise DataError(f"{shown}: not a regular file ({kind}); give the data file itself")
    return path


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def rows_csv(rows: list[dict]) -> str:
    """Records as CSV text, the union of their keys as columns (for DVC plots)."""
    cols = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")
