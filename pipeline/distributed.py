"""Fan a grid of independent cells out over Ray, or run them one after another in-process.

A cell is one `(key, payload)`; `fn(payload, shared, ctx)` runs it and returns a picklable
result. The engine knows nothing about models: it schedules cells with `cpus_per_cell` CPUs
and `gpus_per_cell` GPUs each, puts the `shared` arrays into Ray's object store once,
retries a cell whose worker or node died, and hands every result to `on_result` on the
driver as it arrives. No shared filesystem is assumed: inputs travel through the object
store, results come back as return values, and `ctx.state` keeps a cell's resume state in
an actor on the driver's node, so a retried cell continues where its dead worker stopped.

Ray is imported lazily: `engine="serial"` and this module work without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ENGINES = ("ray", "serial")
_POLL_S = 0.5


@dataclass(frozen=True)
class ClusterInfo:
    """What the cells will run on: alive nodes, total CPUs and GPUs, (CPUs, GPUs) per node."""

    engine: str
    nodes: int
    cpus: float
    gpus: float
    address: str | None = None
    node_ids: tuple[str, ...] = ()
    node_sizes: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class NodeInfo:
    """Where an attempt ran: Ray node id, its IP and hostname, the worker's PID."""

    node_id: str
    ip: str
    hostname: str
    pid: int


@dataclass(frozen=True)
class CellInfo:
    """How a finished cell ran, for `on_result`: node, attempt number (1 = first), seconds."""

    key: str
    node: NodeInfo
    attempt: int
    seconds: float


class CellState:
    """A cell's key/value store that outlives its worker, for resuming a retried attempt.

    Values are any picklable object (bytes for checkpoints); `put` returns once the value
    is stored, so a worker killed right after it loses nothing. Cleared when the cell ends.
    """

    def __init__(self, key: str, backend: Any) -> None:
        self.key = key
        self._backend = backend

    def get(self, name: str, default: Any = None) -> Any:
        """The last value put under `name` by any attempt of this cell, else `default`."""
        found, value = self._backend.get(self.key, name)
        return value if found else default

    def put(self, name: str, value: Any) -> None:
        """Store `value` under `name`, replacing the previous one."""
        self._backend.put(self.key, name, value)


@dataclass(frozen=True)
class CellContext:
    """What `fn` gets besides its payload: key, attempt, node, resources, resume state."""

    key: str
    attempt: int
    node: NodeInfo
    state: CellState
    cpus: float
    gpus: float


class CellsFailed(RuntimeError):
    """Some cells raised or ran out of retries; the others' results are in `results`."""

    def __init__(self, errors: dict[str, BaseException], results: dict[str, Any]) -> None:
        self.errors = errors
        self.results = results
        lines = [
            f"  {k}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"
            for k, e in errors.items()
        ]
        super().__init__(
            f"{len(errors)} of {len(errors) + len(results)} cells failed:\n" + "\n".join(lines)
        )


class _Store:
    """Resume state, attempt counts and running cells per key (the Ray actor's class too)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}
        self.attempts: dict[str, int] = {}
        self.running: dict[str, NodeInfo] = {}

    def begin(self, key: str, node: NodeInfo) -> int:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.running[key] = node
        return self.attempts[key]

    def end(self, key: str) -> None:
        self.running.pop(key, None)
        self.values.pop(key, None)

    def get(self, key: str, name: str) -> tuple[bool, Any]:
        values = self.values.get(key, {})
        return name in values, values.get(name)

    def put(self, key: str, name: str, value: Any) -> None:
        self.values.setdefault(key, {})[name] = value

    def status(self) -> tuple[int, int]:
        """(running cells, cells that needed more than one attempt)."""
        return len(self.running), sum(n > 1 for n in self.attempts.values())


_waiter = None


def _wait_keeping_cpu(ref: Any) -> Any:
    """`ray.get(ref)` from a helper thread: Ray lends the CPU of a task whose main thread
    blocks in ray.get to queued tasks, which would run more cells than CPUs."""
    global _waiter
    import ray

    if _waiter is None:
        from concurrent.futures import ThreadPoolExecutor

        _waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cell-state")
    return _waiter.submit(ray.get, ref).result()


class _ActorBackend:
    """`CellState` backend that calls the store actor and waits for each call."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def get(self, key: str, name: str) -> tuple[bool, Any]:
        return _wait_keeping_cpu(self.actor.get.remote(key, name))

    def put(self, key: str, name: str, value: Any) -> None:
        _wait_keeping_cpu(self.actor.put.remote(key, name, value))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _limit_threads(cpus: float) -> Callable[[], None]:
    """Give intra-op thread pools `cpus` threads; returns a function that restores them."""
    n = str(max(1, int(cpus)))
    saved = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(dict.fromkeys(saved, n))
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(int(n))

    def restore() -> None:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if torch is not None:
            torch.set_num_threads(before)

    return restore


def _ray_cell(fn, key, payload, shared, store, cpus, gpus):
    """One attempt of one cell inside a Ray worker; returns (result, CellInfo)."""
    import ray

    node = NodeInfo(
        node_id=ray.get_runtime_context().get_node_id(),
        ip=ray.util.get_node_ip_address(),
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
    attempt = _wait_keeping_cpu(store.begin.remote(key, node))
    _limit_threads(cpus)
    t0 = time.perf_counter()
    ctx = CellContext(key, attempt, node, CellState(key, _ActorBackend(store)), cpus, gpus)
    result = fn(payload, shared, ctx)
    return result, CellInfo(key, node, attempt, time.perf_counter() - t0)


def _read_only(shared: Mapping[str, Any] | None) -> dict[str, Any]:
    """Arrays as read-only views, as cells see them from Ray's object store."""
    out = {}
    for name, value in (shared or {}).items():
        if hasattr(value, "flags") and hasattr(value, "view"):
            value = value.view()
            value.flags.writeable = False
        out[name] = value
    return out


def cluster_info() -> ClusterInfo:
    """Alive nodes, CPUs and GPUs of the Ray cluster this process is connected to."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("not connected to Ray: call inside `with session(...)`")
    alive = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    address = getattr(ctx, "gcs_address", None)
    return ClusterInfo(
        engine="ray",
        nodes=len(alive),
        cpus=float(res.get("CPU", 0)),
        gpus=float(res.get("GPU", 0)),
        address=address,
        node_ids=tuple(n["NodeID"] for n in alive),
        node_sizes=tuple(
            (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in alive
        ),
    )


def _local_info() -> ClusterInfo:
    torch = sys.modules.get("torch")
    gpus = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    cpus, gpus = float(_cpu_count()), float(gpus)
    return ClusterInfo("serial", 1, cpus, gpus, None, ("local",), ((cpus, gpus),))


@contextlib.contextmanager
def session(
    engine: str = "ray",
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    runtime_env: dict | None = None,
) -> Iterator[ClusterInfo]:
    """Connect to Ray for the block and yield the cluster's `ClusterInfo`.

    `address` (or $RAY_ADDRESS) joins that cluster; otherwise an embedded local Ray is
    started with `num_cpus` (default: this machine's CPUs) and no dashboard. An existing
    connection is reused and left open; one opened here is shut down on exit. Clusters with
    token auth (Ray's default for `ray start`) need RAY_AUTH_MODE=token and the cluster's
    token (RAY_AUTH_TOKEN or ~/.ray/auth_token) in the driver's environment.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "serial":
        yield _local_info()
        return
    import ray

    if ray.is_initialized():
        yield cluster_info()
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"logging_level": logging.WARNING, "runtime_env": runtime_env}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus or _cpu_count(),
            include_dashboard=False,
            **common,
        )
    try:
        yield cluster_info()
    finally:
        ray.shutdown()


def _check_cells(cells: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    cells = list(cells)
    counts = Counter(k for k, _ in cells)
    if any(not isinstance(k, str) for k in counts):
        raise TypeError("cell keys must be strings")
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate cell keys: {dupes}")
    return cells


class _Progress:
    """One bar over cells (done / running / retried / failed) and one log line per cell."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="cells", unit="cell", disable=not enabled)
        self.failed = self.retried = 0

    def status(self, running: int, retried: int) -> None:
        self.retried = retried
        self.bar.set_postfix(running=running, retried=retried, failed=self.failed, refresh=True)

    def done(self, info: CellInfo, result: Any) -> None:
        summary = result.get("summary") if isinstance(result, Mapping) else None
        log.info(
            "cell %s done on %s %s (node %s) in %.1f s, attempt %d%s",
            info.key,
            info.node.hostname,
            info.node.ip,
            info.node.node_id[:8],
            info.seconds,
            info.attempt,
            f": {summary}" if summary else "",
        )
        self.bar.update(1)

    def fail(self, key: str, err: BaseException) -> None:
        self.failed += 1
        log.error("cell %s failed: %s: %s", key, type(err).__name__, err)
        self.bar.update(1)

    def close(self) -> None:
        self.status(0, self.retried)
        self.bar.close()


def _check_fits(cpus: float, gpus: float, nodes: Sequence[tuple[float, float]]) -> None:
    """Refuse cells that no node (CPUs, GPUs) can hold: Ray would queue them forever."""
    if not any(c >= cpus and g >= gpus for c, g in nodes):
        raise ValueError(
            f"no node can run a cell with {cpus} CPUs and {gpus} GPUs; "
            f"nodes have (CPUs, GPUs): {sorted(nodes)}"
        )


def gpus_for_cells(gpus_per_cell: float | None, cluster_gpus: float) -> float:
    """GPUs per cell: as asked, or 1 when the cluster has GPUs and 0 when it has none."""
    if gpus_per_cell is None:
        return 1.0 if cluster_gpus > 0 else 0.0
    if gpus_per_cell < 0:
        raise ValueError(f"gpus_per_cell must be >= 0, got {gpus_per_cell}")
    return float(gpus_per_cell)


def run_cells(
    fn: Callable[[Any, dict[str, Any], CellContext], Any],
    cells: Sequence[tuple[str, Any]],
    *,
    engine: str = "ray",
    address: str | None = None,
    cpus_per_cell: float = 1,
    gpus_per_cell: float | None = None,
    shared: Mapping[str, Any] | None = None,
    max_retries: int = 3,
    on_result: Callable[[str, Any, CellInfo], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run `fn(payload, shared, ctx)` for every `(key, payload)` cell; results by key.

    engine="ray" runs cells in parallel on an embedded local Ray, or on the cluster at
    `address`/$RAY_ADDRESS (see `session`); engine="serial" runs them here in order.
    `gpus_per_cell=None` means 1 when the cluster has GPUs, else 0; fractions share a GPU.
    `shared` arrays are put into the object store once and reach every cell read-only.
    A cell whose worker dies is retried up to `max_retries` times; exceptions raised by
    `fn` are not retried. `on_result(key, result, info)` runs here as each cell finishes.
    Failed cells raise `CellsFailed` after the others finished. On KeyboardInterrupt the
    finished results are delivered, running cells cancelled, and the interrupt re-raised.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if cpus_per_cell <= 0:
        raise ValueError(f"cpus_per_cell must be > 0, got {cpus_per_cell}")
    cells = _check_cells(cells)
    if engine == "serial":
        local = _local_info()
        gpus = gpus_for_cells(gpus_per_cell, local.gpus)
        _check_fits(cpus_per_cell, gpus, [(local.cpus, local.gpus)])
        return _run_serial(fn, cells, cpus_per_cell, gpus, shared, on_result, progress)
    with session("ray", address) as info:
        gpus = gpus_for_cells(gpus_per_cell, info.gpus)
        _check_fits(cpus_per_cell, gpus, info.node_sizes)
        return _run_ray(fn, cells, cpus_per_cell, gpus, shared, max_retries, on_result, progress)


def _finish(
    key: str,
    result: Any,
    info: CellInfo,
    results: dict[str, Any],
    on_result: Callable | None,
    bar: _Progress,
) -> None:
    results[key] = result
    bar.done(info, result)
    if on_result is not None:
        on_result(key, result, info)


def _run_serial(fn, cells, cpus, gpus, shared, on_result, progress) -> dict[str, Any]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    store = _Store()
    node = NodeInfo("local", "127.0.0.1", socket.gethostname(), os.getpid())
    shared = _read_only(shared)
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    bar = _Progress(len(cells), progress)
    with logging_redirect_tqdm():
        try:
            for key, payload in cells:
                attempt = store.begin(key, node)
                ctx = CellContext(key, attempt, node, CellState(key, store), cpus, gpus)
                bar.status(1, 0)
                restore = _limit_threads(cpus)
                t0 = time.perf_counter()
                try:
                    result = fn(payload, shared, ctx)
                except Exception as err:
                    errors[key] = err
                    bar.fail(key, err)
                    continue
                finally:
                    restore()
                    store.end(key)
                info = CellInfo(key, node, attempt, time.perf_counter() - t0)
                _finish(key, result, info, results, on_result, bar)
        finally:
            bar.close()
    if errors:
        raise CellsFailed(errors, results) from next(iter(errors.values()))
    return results


def _run_ray(fn, cells, cpus, gpus, shared, max_retries, on_result, progress) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tqdm.contrib.logging import logging_redirect_tqdm

    here = ray.get_runtime_context().get_node_id()
    store = (
        ray.remote(_Store)
        .options(
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=3,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        )
        .remote()
    )
    task = ray.remote(_ray_cell)
    opts = {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_retries": max_retries,
        "retry_exceptions": False,
    }
    fn_ref, shared_ref = ray.put(fn), ray.put(dict(shared or {}))
    pending = {}
    for key, payload in cells:
        ref = task.options(name=f"cell:{key}", **opts).remote(
            fn_ref, key, payload, shared_ref, store, cpus, gpus
        )
        pending[ref] = key
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    bar = _Progress(len(cells), progress)

    def collect(refs: list) -> None:
        for ref in refs:
            key = pending.pop(ref)
            store.end.remote(key)
            try:
                result, info = ray.get(ref)
            except ray.exceptions.RayError as err:
                errors[key] = err
                bar.fail(key, err)
                continue
            _finish(key, result, info, results, on_result, bar)

    status = store.status.remote()
    with logging_redirect_tqdm():
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_POLL_S)
                collect(ready)
                if ray.wait([status], timeout=0)[0]:
                    running, retried = ray.get(status)
                    bar.status(min(running, len(pending)), retried)
                    status = store.status.remote()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and pending:
                try:
                    ready = ray.wait(list(pending), num_returns=len(pending), timeout=0)[0]
                    log.warning("interrupted: delivering %d finished cells", len(ready))
                    collect(ready)
                except Exception:
                    log.exception("delivering finished cells after the interrupt failed")
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            log.warning("cancelled %d unfinished cells: %s", len(pending), sorted(pending.values()))
            raise
        finally:
            bar.close()
    if errors:
        raise CellsFailed(errors, results) from next(iter(errors.values()))
    return results
