"""Verified downloads and copies: a file reaches its destination only if its size and sha256 match.

Bytes are streamed into a temp file beside ``dest`` and renamed onto it after verification, so a
failed or mismatching transfer never leaves a partial file and never touches an existing ``dest``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import ChecksumError, DataError
from pipeline.io import atomic_path, os_error_reason, regular_file, sha256_file

__all__ = ["copy_verified", "download", "verify_file"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = "hsi-pipeline/0.1 (+https://pypi.org/project/hsi-pipeline)"
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
_TRANSIENT = (
    urllib.error.URLError,
    TimeoutError,
    socket.timeout,
    ConnectionError,
    http.client.HTTPException,
)


class _Incomplete(Exception):
    """The server closed the connection before sending Content-Length bytes."""


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 60,
    retries: int = 3,
    progress: bool = True,
    backoff: float = 1.0,
) -> str:
    """Download ``url`` to ``dest`` and return the file's sha256.

    Transient failures (connection errors, timeouts, incomplete reads, HTTP 5xx/408/429) are
    retried ``retries`` times after the first attempt, waiting ``backoff * 2**i`` seconds.
    Other HTTP errors (e.g. 404) and host names that do not resolve (offline) fail at once
    with :class:`DataError`. A size or sha256 that differs from the expected one raises
    :class:`ChecksumError`; nothing is written then.
    With ``sha256=None`` the hash is computed, logged as a warning and returned.
    """
    dest = Path(dest)
    attempts = max(0, int(retries)) + 1
    last: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            log.info(
                "retrying %s in %.1f s (attempt %d/%d): %s", url, delay, attempt + 1, attempts, last
            )
            time.sleep(delay)
        try:
            with atomic_path(dest) as tmp:
                actual_sha, actual_size = _fetch(url, tmp, timeout, progress, dest.name)
                _check(url, dest, sha256, size, actual_sha, actual_size)
        except urllib.error.HTTPError as exc:
            last = exc
            if exc.code not in _RETRY_HTTP:
                raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        except (_Incomplete, *_TRANSIENT) as exc:
            last = exc
            if isinstance(getattr(exc, "reason", None), socket.gaierror):
                break  # the host name does not resolve (offline): retrying will not help
        else:
            if sha256 is None:
                log.warning("sha256 unknown; recorded %s for %s (from %s)", actual_sha, dest, url)
            return actual_sha
    raise DataError(f"download of {url} failed after {attempt + 1} attempt(s): {_reason(last)}")


def copy_verified(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
) -> str:
    """Copy local file ``src`` to ``dest`` atomically after checking size/sha256; return sha256.

    ``src`` must be a regular file (a FIFO or device would block or never end). The copy keeps
    ``src``'s mtime (as ``cp -p``), so copying the same file again gives the same manifest."""
    src, dest = regular_file(src), Path(dest)
    if dest.exists() and os.path.samefile(src, dest):
        return verify_file(dest, sha256=sha256, size=size)
    st = src.stat()
    actual_size = st.st_size
    if size is not None and actual_size != size:
        _check(str(src), dest, None, size, "", actual_size)
    h = hashlib.sha256()
    try:
        fin = open(src, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(f"{src}: cannot read: {os_error_reason(exc)}") from exc
    with fin, atomic_path(dest) as tmp:
        with open(tmp, "wb") as fout:
            while block := _read(fin, src):
                h.update(block)
                fout.write(block)
        _check(str(src), dest, sha256, size, h.hexdigest(), tmp.stat().st_size)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    return h.hexdigest()


def _read(f, src: Path) -> bytes:
    try:
        return f.read(_CHUNK)
    except OSError as exc:
        raise DataError(f"{src}: cannot read: {os_error_reason(exc)}") from exc


def verify_file(
    path: str | os.PathLike, *, sha256: str | None = None, size: int | None = None
) -> str:
    """Return ``path``'s sha256 after checking it against the expected size and hash."""
    path = regular_file(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        _check(str(path), path, None, size, "", actual_size)
    actual = sha256_file(path)
    _check(str(path), path, sha256, size, actual, actual_size)
    return actual


def _fetch(url: str, tmp: Path, timeout: float, progress: bool, label: str) -> tuple[str, int]:
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    h = hashlib.sha256()
    n = 0
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as f:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            disable=not progress,
            leave=False,
        ) as bar:
            while block := resp.read(_CHUNK):
                h.update(block)
                f.write(block)
                n += len(block)
                bar.update(len(block))
    if total is not None and n != total:
        raise _Incomplete(f"received {n} of {total} bytes")
    return h.hexdigest(), n


def _check(
    origin: str,
    dest: Path,
    sha256: str | None,
    size: int | None,
    actual_sha: str,
    actual_size: int,
) -> None:
    if size is not None and actual_size != size:
        raise ChecksumError(
            f"size mismatch for {origin} -> {dest}: expected {size} bytes, got {actual_size}"
        )
    if sha256 is not None and actual_sha.lower() != sha256.lower():
        raise ChecksumError(
            f"sha256 mismatch for {origin} -> {dest}: expected {sha256.lower()}, got {actual_sha}"
        )


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
