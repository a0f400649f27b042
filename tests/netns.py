"""Run test code inside a loopback-only network namespace.

Ray binds its servers to the machine's interface address even when told 127.0.0.1
(ray#26293), so every test process that starts Ray runs in a namespace whose only device
is `lo`: `unshare -n sh -c 'ip link set lo up && ...'` keeps a holder process there and
each command joins it with `nsenter --net`. Closing the namespace SIGKILLs, by PID, every
process in it (Ray daemons included), since `ray stop` matches process names machine-wide.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
_TOOLS = ("unshare", "nsenter", "ip", "ss")


def unavailable_reason(ray: bool = True) -> str | None:
    """Why loopback-namespace tests cannot run here, or None when they can."""
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools for network namespaces: {', '.join(missing)}"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"`unshare -n` is not permitted here: {probe.stderr.strip() or probe.returncode}"
    if ray and importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install ray)"
    return None


def require(ray: bool = True) -> None:
    """Skip the calling test when loopback namespaces (or Ray) are not available."""
    reason = unavailable_reason(ray)
    if reason:
        pytest.skip(reason)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket: local address, port and the owning process."""

    address: str
    port: int
    process: str
    pid: int

    @property
    def loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and their IPv4-mapped IPv6 forms."""
        addr = self.address.strip("[]").removeprefix("::ffff:")
        return addr.startswith("127.") or addr == "::1"


def _net_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


class LoopbackNamespace:
    """A network namespace with only `lo` up; run commands in it, then kill all it holds.

    `tmp` is a short private directory (Unix socket paths must stay under 108 bytes) that
    every command gets as RAY_TMPDIR, so Ray's session directories and its
    `ray_current_cluster` file never mix with other Ray instances on the machine. Every
    command also gets RAY_AUTH_MODE=token and this namespace's own RAY_AUTH_TOKEN: Ray
    2.60 turns token auth on for new clusters, and `ray start --address` nodes and drivers
    must present the head's token (else they read, or create, ~/.ray/auth_token).
    """

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="nsray", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self._holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 86400"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        line = self._holder.stdout.readline().strip()
        self.ns = _net_ns(self._holder.pid)
        if line != "up" or self.ns is None or self.ns == _net_ns("self"):
            self.close()
            raise RuntimeError(f"could not set up a loopback namespace (holder said {line!r})")
        links = self.run(["ip", "-o", "link", "show"], timeout=10).stdout.splitlines()
        if [ln.split(":")[1].strip() for ln in links] != ["lo"]:
            self.close()
            raise RuntimeError(f"namespace has devices other than lo: {links}")

    def __enter__(self) -> LoopbackNamespace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def argv(self, cmd: list[str]) -> list[str]:
        """`cmd` prefixed to run in this namespace (nsenter execs it: same PID)."""
        return ["nsenter", f"--net=/proc/{self._holder.pid}/ns/net", *cmd]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for commands here: repo on PYTHONPATH, private RAY_TMPDIR."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["RAY_TMPDIR"] = str(self.tmp)
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        env.pop("RAY_ADDRESS", None)
        env.update(extra or {})
        return env

    def popen(self, cmd: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        """Start `cmd` in the namespace; its pid is the command's own. SIGINT is reset to its
        default, which a shell's background job (`make test &`) would otherwise pass on as
        ignored, and a test's Ctrl-C would then do nothing."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("preexec_fn", _default_sigint)
        return subprocess.Popen(self.argv(cmd), env=self.env(env), cwd=kw.pop("cwd", REPO), **kw)

    def run(
        self, cmd: list[str], timeout: float, env: dict[str, str] | None = None, check=False
    ) -> subprocess.CompletedProcess:
        """Run `cmd` in the namespace and capture its output as text."""
        return subprocess.run(
            self.argv(cmd),
            env=self.env(env),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def python_argv(self, code: str | Path, *args: str) -> list[str]:
        """The python command for a `-c` snippet (str) or a script (Path)."""
        return [PYTHON, str(code), *args] if isinstance(code, Path) else [PYTHON, "-c", code, *args]

    def python(
        self, code: str | Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a python snippet or script in the namespace; returncode, stdout, stderr."""
        return self.run(self.python_argv(code, *args), timeout=timeout, env=env)

    def pids(self) -> list[int]:
        """Every process in this namespace except the holder."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self._holder.pid and _net_ns(entry) == self.ns:
                out.append(int(entry))
        return out

    def listeners(self) -> list[Listener]:
        """Listening TCP sockets in the namespace, from `ss -tlnp`."""
        out = self.run(["ss", "-H", "-tlnp"], timeout=20, check=True).stdout
        return parse_ss(out)

    def close(self, grace: float = 0.0) -> None:
        """SIGKILL every process in the namespace (by PID), then the holder; remove tmp."""
        if self.ns is not None:
            deadline = time.monotonic() + max(grace, 0) + 10
            while (pids := self.pids()) and time.monotonic() < deadline:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
        if self._holder.poll() is None:
            self._holder.kill()
        self._holder.wait()
        self._holder.stdout.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse_ss(text: str) -> list[Listener]:
    """Listeners from `ss -H -tlnp` lines (state, queues, local, peer, users:((...)))."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "LISTEN":
            continue
        addr, _, port = parts[3].rpartition(":")
        users = " ".join(parts[5:])
        process, pid = "", -1
        if users.startswith("users:((") and '"' in users:
            process = users.split('"')[1]
            with contextlib.suppress(ValueError, IndexError):
                pid = int(users.split("pid=")[1].split(",")[0])
        found.append(Listener(addr, int(port), process, pid))
    return found


def ray_listeners(ns: LoopbackNamespace) -> list[Listener]:
    """The sockets that Ray processes (gcs_server, raylet, ray::*, drivers) listen on."""
    ray_pids = set()
    for pid in ns.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            maps = Path(f"/proc/{pid}/maps").read_bytes()
        except OSError:
            continue
        if b"ray" in cmdline or b"_raylet" in maps:
            ray_pids.add(pid)
    return [ln for ln in ns.listeners() if ln.pid in ray_pids or "ray" in ln.process]


def run_python(code: str | Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a snippet or script in a fresh loopback namespace, killing what it leaves."""
    with LoopbackNamespace() as ns:
        return ns.python(code, *args, timeout=timeout)
