"""Verified downloads against a local HTTP server on 127.0.0.1 (no outside network)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.data.download import copy_verified, download, verify_file
from pipeline.errors import ChecksumError, DataError

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 2, "backoff": 0.0, "timeout": 5, "progress": False}


class Server:
    """A ThreadingHTTPServer serving ``root``; ``faults[path]`` lists failures to inject first."""

    def __init__(self, root):
        self.root = root
        self.hits: Counter[str] = Counter()
        self.faults: dict[str, list[str]] = {}
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                queue = server.faults.get(self.path)
                fault = queue.pop(0) if queue else None
                if fault == "503":
                    self.send_error(503)
                elif fault == "short":
                    data = (root / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 3])
                    self.close_connection = True
                elif fault == "slow":
                    time.sleep(0.6)
                    self.send_error(503)
                else:
                    super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Keep requests to 127.0.0.1 away from any proxy configured in the environment."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_download_verified(server, out):
    dest = out / "data.bin"
    digest = download(server.url("data.bin"), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), **FAST)
    assert digest == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in out.iterdir()) == ["data.bin"]


def test_download_with_progress_bar(server, out, capsys):
    dest = out / "data.bin"
    download(server.url("data.bin"), dest, sha256=PAYLOAD_SHA, retries=0, progress=True)
    assert dest.read_bytes() == PAYLOAD


def test_sha256_mismatch_leaves_nothing(server, out):
    url = server.url("data.bin")
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(url, out / "data.bin", sha256=wrong, **FAST)
    msg = str(err.value)
    assert url in msg and str(out / "data.bin") in msg and wrong in msg and PAYLOAD_SHA in msg
    assert list(out.iterdir()) == []
    assert server.hits["/data.bin"] == 1


def test_mismatch_keeps_existing_dest(server, out):
    dest = out / "data.bin"
    dest.write_bytes(b"old content")
    with pytest.raises(ChecksumError):
        download(server.url("data.bin"), dest, sha256="f" * 64, **FAST)
    assert dest.read_bytes() == b"old content"
    assert sorted(p.name for p in out.iterdir()) == ["data.bin"]


def test_size_mismatch(server, out):
    with pytest.raises(ChecksumError, match=rf"expected 12 bytes, got {len(PAYLOAD)}"):
        download(server.url("data.bin"), out / "data.bin", size=12, **FAST)
    assert list(out.iterdir()) == []


def test_unknown_hash_recorded(server, out, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.data.download"):
        digest = download(server.url("data.bin"), out / "data.bin", **FAST)
    assert digest == PAYLOAD_SHA
    assert f"sha256 unknown; recorded {PAYLOAD_SHA}" in caplog.text


def test_404_is_a_clear_error(server, out):
    url = server.url("missing.mat")
    with pytest.raises(DataError, match=r"missing\.mat.*HTTP 404") as err:
        download(url, out / "missing.mat", **FAST)
    assert not isinstance(err.value, ChecksumError)
    assert list(out.iterdir()) == []


def test_transient_errors_are_retried(server, out):
    server.faults["/data.bin"] = ["503", "short"]
    digest = download(server.url("data.bin"), out / "data.bin", sha256=PAYLOAD_SHA, **FAST)
    assert digest == PAYLOAD_SHA
    assert server.hits["/data.bin"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["data.bin"]


def test_gives_up_after_retries(server, out):
    server.faults["/data.bin"] = ["503"] * 10
    with pytest.raises(DataError, match=r"after 3 attempt\(s\): HTTP 503"):
        download(server.url("data.bin"), out / "data.bin", **FAST)
    assert server.hits["/data.bin"] == 3
    assert list(out.iterdir()) == []


def test_timeout_is_retried(server, out):
    server.faults["/data.bin"] = ["slow"]
    opts = {**FAST, "timeout": 0.2}
    assert download(server.url("data.bin"), out / "data.bin", **opts) == PAYLOAD_SHA
    assert server.hits["/data.bin"] == 2


def test_connection_refused(out):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="failed after 2 attempt"):
        download(f"http://127.0.0.1:{port}/x", out / "x", **{**FAST, "retries": 1})
    assert list(out.iterdir()) == []


def test_copy_verified(tmp_path, out):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    assert copy_verified(src, out / "a.bin", sha256=PAYLOAD_SHA, size=len(PAYLOAD)) == PAYLOAD_SHA
    assert (out / "a.bin").read_bytes() == PAYLOAD
    assert copy_verified(src, out / "b.bin") == PAYLOAD_SHA
    assert verify_file(out / "b.bin", sha256=PAYLOAD_SHA.upper()) == PAYLOAD_SHA


def test_copy_verified_mismatch(tmp_path, out):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = out / "a.bin"
    dest.write_bytes(b"keep me")
    with pytest.raises(ChecksumError, match=r"src\.bin.*a\.bin.*expected 0{64}"):
        copy_verified(src, dest, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="expected 1 bytes"):
        copy_verified(src, dest, size=1)
    assert dest.read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["a.bin"]
    with pytest.raises(DataError, match=r"nothere\.bin: file not found"):
        copy_verified(tmp_path / "nothere.bin", dest)
