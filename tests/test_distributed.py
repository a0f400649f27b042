"""The cell fan-out engine: serial and Ray engines agree, two nodes, kill -9, Ctrl-C, no Ray.

Every test that starts Ray runs its driver as a script inside a loopback-only network
namespace (tests/netns.py); pytest itself never imports Ray's runtime.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import netns
import numpy as np
import pytest

from pipeline import distributed as d

RAY = str(Path(sys.executable).with_name("ray"))

CELLS = '''
import json, os, subprocess, sys, time
from pathlib import Path

import numpy as np

from pipeline import distributed as d


def grid_cell(payload, shared, ctx):
    """A deterministic score of the payload against the shared array, and where it ran."""
    t0 = time.time()
    seed, fold = payload
    w = shared["weights"]
    x = np.random.default_rng(seed * 10 + fold).standard_normal(w.size)
    time.sleep(float(shared["sleep"][0]))
    return {
        "score": float(x @ w),
        "writable": bool(w.flags.writeable),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "pid": os.getpid(),
        "span": [t0, time.time()],
        "summary": f"score {float(x @ w):.3f}",
    }


def epoch_cell(payload, shared, ctx):
    """Trains `epochs` fake epochs, checkpointing into ctx.state; resumes from it."""
    work = Path(payload["dir"])
    ckpt = ctx.state.get("ckpt", {"epoch": 0, "total": 0})
    first = ckpt["epoch"]
    (work / f"pid-{ctx.attempt}").write_text(str(os.getpid()))
    for epoch in range(first, payload["epochs"]):
        time.sleep(payload["epoch_s"])
        ckpt = {
            "epoch": epoch + 1,
            "total": ckpt["total"] + (epoch + 1) ** 2,
            "weights": bytes(payload["state_bytes"]),
        }
        ctx.state.put("ckpt", ckpt)
        (work / "progress").write_text(f"{ctx.attempt} {epoch + 1}")
    return {"total": ckpt["total"], "first_epoch": first, "attempt": ctx.attempt}


GRID = [(f"seed{s}-fold{f}", (s, f)) for s in range(2) for f in range(2)]
SHARED = {"weights": np.linspace(-1.0, 1.0, 4096), "sleep": np.array([1.0])}
'''

GRID = [(f"seed{s}-fold{f}", (s, f)) for s in range(2) for f in range(2)]
WEIGHTS = np.linspace(-1.0, 1.0, 4096)


def expected_score(seed: int, fold: int) -> float:
    return float(np.random.default_rng(seed * 10 + fold).standard_normal(WEIGHTS.size) @ WEIGHTS)


@pytest.fixture
def ns():
    netns.require(ray=True)
    with netns.LoopbackNamespace() as space:
        yield space
    assert not space.pids(), "processes left in the namespace after close"


def write_driver(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "driver.py"
    script.write_text(CELLS + textwrap.dedent(body))
    return script


def run_driver(ns, tmp_path: Path, body: str, *args: str, timeout: float = 240) -> dict:
    """Run CELLS + body in the namespace with argv[1] = a JSON output path; its JSON."""
    out = tmp_path / "out.json"
    proc = ns.python(write_driver(tmp_path, body), str(out), *args, timeout=timeout)
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


# --- without Ray -----------------------------------------------------------------------


def _grid_cell(payload, shared, ctx):
    seed, fold = payload
    w = shared["weights"]
    x = np.random.default_rng(seed * 10 + fold).standard_normal(w.size)
    ctx.state.put("seen", ctx.state.get("seen", 0) + 1)
    return {"score": float(x @ w), "writable": w.flags.writeable, "state": ctx.state.get("seen")}


def test_serial_engine_runs_every_cell_once_with_shared_arrays():
    seen = []
    results = d.run_cells(
        _grid_cell,
        GRID,
        engine="serial",
        shared={"weights": WEIGHTS},
        on_result=lambda k, r, i: seen.append((k, i.attempt, i.node.pid)),
        progress=False,
    )
    assert sorted(seen) == sorted((k, 1, os.getpid()) for k, _ in GRID)
    for key, (seed, fold) in GRID:
        assert results[key]["score"] == pytest.approx(expected_score(seed, fold))
        assert results[key]["writable"] is False
        assert results[key]["state"] == 1


def test_serial_engine_reports_failed_cells_after_running_the_others():
    def cell(payload, shared, ctx):
        if payload == 1:
            raise ValueError("bad fold")
        return payload * 10

    delivered = []
    with pytest.raises(d.CellsFailed, match="1 of 3 cells failed") as err:
        d.run_cells(
            cell,
            [("a", 0), ("b", 1), ("c", 2)],
            engine="serial",
            on_result=lambda k, r, i: delivered.append(k),
            progress=False,
        )
    assert delivered == ["a", "c"]
    assert err.value.results == {"a": 0, "c": 20}
    assert isinstance(err.value.errors["b"], ValueError)


def test_cell_keys_must_be_unique_strings():
    with pytest.raises(ValueError, match="duplicate"):
        d.run_cells(lambda p, s, c: p, [("a", 1), ("a", 2)], engine="serial")
    with pytest.raises(TypeError):
        d.run_cells(lambda p, s, c: p, [(1, 1)], engine="serial")


def test_cells_larger_than_every_node_are_refused():
    with pytest.raises(ValueError, match="no node can run a cell with 10000 CPUs"):
        d.run_cells(lambda p, s, c: p, [("a", 1)], engine="serial", cpus_per_cell=10_000)


def test_gpus_per_cell_defaults_to_one_only_when_the_cluster_has_gpus():
    assert d.gpus_for_cells(None, 0) == 0
    assert d.gpus_for_cells(None, 8) == 1
    assert d.gpus_for_cells(0.25, 1) == 0.25
    with pytest.raises(ValueError):
        d.gpus_for_cells(-1, 1)


def test_core_imports_and_runs_serially_without_ray():
    code = textwrap.dedent(
        """
        import sys

        class NoRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ModuleNotFoundError("No module named 'ray'", name="ray")

        sys.meta_path.insert(0, NoRay())
        import pipeline.distributed as d

        out = d.run_cells(lambda p, s, c: p * 2, [("a", 1), ("b", 2)], engine="serial")
        assert out == {"a": 2, "b": 4}, out
        with d.session("serial") as info:
            assert info.nodes == 1
        try:
            d.run_cells(lambda p, s, c: p, [("a", 1)], engine="ray")
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("engine='ray' ran without Ray")
        assert "ray" not in sys.modules
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=netns.REPO,
        env={**os.environ, "PYTHONPATH": str(netns.REPO), "TQDM_DISABLE": "1"},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# --- with Ray, inside a loopback-only namespace -----------------------------------------


@pytest.mark.integration
def test_embedded_ray_matches_serial_and_reports_failed_cells(ns, tmp_path):
    out = run_driver(
        ns,
        tmp_path,
        """
        def fails_on_two(payload, shared, ctx):
            if payload == 2:
                raise ValueError("bad fold")
            return payload

        def torch_threads(payload, shared, ctx):
            import torch

            return [torch.get_num_threads(), os.getpid()]

        out = {"driver_pid": os.getpid(), "cpus": len(os.sched_getaffinity(0))}
        for engine in ("serial", "ray"):
            seen = []
            with d.session(engine) as info:
                out[f"{engine}-info"] = [info.engine, info.nodes, info.cpus]
                results = d.run_cells(
                    grid_cell,
                    GRID,
                    engine=engine,
                    shared=SHARED,
                    on_result=lambda k, r, i: seen.append([k, i.attempt, i.node.node_id]),
                    progress=False,
                )
                out[engine] = {"results": results, "seen": seen}
                one = d.run_cells(torch_threads, [("a", 0), ("b", 0)], engine=engine)
                two = d.run_cells(torch_threads, [("c", 0)], engine=engine, cpus_per_cell=2)
                out[engine]["threads"] = [one, two]
                try:
                    d.run_cells(torch_threads, [("x", 0)], engine=engine, cpus_per_cell=1000)
                except ValueError as err:
                    out[engine]["too_big"] = str(err)
                try:
                    d.run_cells(fails_on_two, [("ok", 1), ("bad", 2)], engine=engine)
                except d.CellsFailed as err:
                    out[engine]["failed"] = [err.results, sorted(err.errors), str(err)]
                    out[engine]["value_error"] = isinstance(err.errors["bad"], ValueError)
        json.dump(out, open(sys.argv[1], "w"))
        """,
    )
    keys = sorted(k for k, _ in GRID)
    for engine in ("serial", "ray"):
        assert sorted(k for k, _, _ in out[engine]["seen"]) == keys, engine
        assert {a for _, a, _ in out[engine]["seen"]} == {1}
        for key, (seed, fold) in GRID:
            res = out[engine]["results"][key]
            assert res["score"] == pytest.approx(expected_score(seed, fold)), (engine, key)
            assert res["writable"] is False
            assert res["omp"] == "1"
        failed = out[engine]["failed"]
        assert failed[:2] == [{"ok": 1}, ["bad"]] and "ValueError: bad fold" in failed[2], failed
        assert out[engine]["value_error"]
        assert "no node can run a cell with 1000 CPUs" in out[engine]["too_big"]
        one, two = out[engine]["threads"]
        assert [t for t, _ in one.values()] == [1, 1] and two["c"][0] == 2, (engine, one, two)
    ray_results = out["ray"]["results"]
    assert all(r["pid"] != out["driver_pid"] for r in ray_results.values())
    assert out["ray-info"] == ["ray", 1, out["cpus"]]
    if out["cpus"] > 1:
        spans = sorted(r["span"] for r in ray_results.values())
        assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), (
            f"no cells overlapped: {spans}"
        )


@pytest.mark.integration
def test_two_node_cluster_on_loopback(ns, tmp_path):
    port = "6380"
    head = ns.run(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        timeout=90,
    )
    assert head.returncode == 0, head.stderr[-3000:]
    worker = ns.run(
        [
            RAY,
            "start",
            f"--address=127.0.0.1:{port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--disable-usage-stats",
        ],
        timeout=90,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    out = run_driver(
        ns,
        tmp_path,
        """
        address = sys.argv[2]
        seen = {}
        with d.session(address=address) as info:
            results = d.run_cells(
                grid_cell,
                GRID,
                address=address,
                shared=SHARED,
                on_result=lambda k, r, i: seen.setdefault(k, i.node.node_id),
                progress=False,
            )
            ss = subprocess.run(["ss", "-H", "-tlnp"], capture_output=True, text=True).stdout
        out = {"nodes": info.nodes, "node_ids": info.node_ids, "seen": seen, "ss": ss}
        out["scores"] = {k: r["score"] for k, r in results.items()}
        json.dump(out, open(sys.argv[1], "w"))
        """,
        f"127.0.0.1:{port}",
    )
    assert out["nodes"] == 2
    assert set(out["seen"].values()) == set(out["node_ids"]), "cells did not run on both nodes"
    for key, (seed, fold) in GRID:
        assert out["scores"][key] == pytest.approx(expected_score(seed, fold))
    during = netns.parse_ss(out["ss"])
    after = netns.ray_listeners(ns)
    assert {"gcs_server", "raylet"} <= {ln.process for ln in after}
    not_loopback = [ln for ln in during + after if not ln.loopback]
    assert during and not not_loopback, f"Ray listens beyond loopback: {not_loopback}"


@pytest.mark.integration
def test_cells_blocked_on_ctx_state_keep_their_cpu(ns, tmp_path):
    """Ray lends a task's CPU to queued tasks while the task's main thread waits in ray.get;
    state calls must not, or cells that checkpoint every epoch overrun cpus_per_cell."""
    out = run_driver(
        ns,
        tmp_path,
        """
        def chatty_cell(payload, shared, ctx):
            t0 = time.time()
            for epoch in range(10):
                ctx.state.put("ckpt", bytes(200_000))
                ctx.state.get("ckpt")
                time.sleep(0.1)
            return [t0, time.time()]

        with d.session(num_cpus=1):
            spans = d.run_cells(chatty_cell, [(f"c{i}", i) for i in range(3)], progress=False)
        json.dump(sorted(spans.values()), open(sys.argv[1], "w"))
        """,
    )
    overlaps = [(a, b) for a, b in itertools.pairwise(out) if b[0] < a[1]]
    assert not overlaps, f"cells overlapped on a 1-CPU Ray: {out}"


def first_attempt_past(progress: Path, epoch: int) -> bool:
    """True once the cell's first attempt has stored the state of `epoch`."""
    fields = progress.read_text().split() if progress.exists() else []
    return len(fields) == 2 and fields[0] == "1" and int(fields[1]) >= epoch


@pytest.mark.integration
def test_kill9_of_a_worker_retries_and_resumes_from_cell_state(ns, tmp_path):
    epochs = 10
    dirs = {name: tmp_path / name for name in ("victim", "control")}
    for p in dirs.values():
        p.mkdir()
    body = """
    payload = dict(epochs=int(sys.argv[2]), epoch_s=0.4, state_bytes=8_000_000)
    cells = [(n, dict(payload, dir=sys.argv[3 + i])) for i, n in enumerate(["victim", "control"])]
    attempts = {}
    results = d.run_cells(
        epoch_cell, cells, on_result=lambda k, r, i: attempts.setdefault(k, i.attempt), progress=False
    )
    json.dump({"results": results, "attempts": attempts}, open(sys.argv[1], "w"))
    """
    out_path = tmp_path / "out.json"
    args = [str(out_path), str(epochs), str(dirs["victim"]), str(dirs["control"])]
    with open(tmp_path / "driver.log", "w") as log:
        driver = ns.popen(
            ns.python_argv(write_driver(tmp_path, body), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            progress = dirs["victim"] / "progress"
            deadline = time.monotonic() + 60
            while not first_attempt_past(progress, epoch=3):
                assert time.monotonic() < deadline and driver.poll() is None, (
                    "victim never at epoch 3"
                )
                time.sleep(0.02)
            killed = int((dirs["victim"] / "pid-1").read_text())
            os.kill(killed, signal.SIGKILL)
            driver.wait(timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-4000:]
    out = json.loads(out_path.read_text())
    total = sum((e + 1) ** 2 for e in range(epochs))
    victim, control = out["results"]["victim"], out["results"]["control"]
    assert control == {"total": total, "first_epoch": 0, "attempt": 1}
    assert victim["total"] == total
    assert victim["attempt"] == 2 and out["attempts"]["victim"] == 2
    assert victim["first_epoch"] >= 3, "the retry did not resume from the stored state"
    assert int((dirs["victim"] / "pid-2").read_text()) != killed


@pytest.mark.integration
def test_ctrl_c_delivers_finished_cells_cancels_the_rest_and_reraises(ns, tmp_path):
    """SIGINT lands while on_result is busy with `quick` and `late` has finished meanwhile.

    The driver keeps its Ray session open after the interrupt, so the long cells' workers
    die only if run_cells cancelled them.
    """
    body = """
    work = Path(sys.argv[2])

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    def cell(payload, shared, ctx):
        (work / f"started-{ctx.key}").write_text(str(os.getpid()))
        time.sleep(payload)
        (work / f"finished-{ctx.key}").write_text("")
        return payload

    def on_result(key, result, info):
        print("DELIVERED", key, flush=True)
        if key == "quick":
            while not (work / "finished-late").exists():
                time.sleep(0.05)
            time.sleep(1.0)
            (work / "busy").write_text("")
            time.sleep(120)

    cells = [("quick", 0.2), ("late", 3.0), ("long1", 120.0), ("long2", 120.0)]
    with d.session():
        try:
            d.run_cells(cell, cells, on_result=on_result, progress=False)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            pids = [int(p.read_text()) for p in work.glob("started-long*")]
            deadline = time.monotonic() + 15
            while any(map(alive, pids)) and time.monotonic() < deadline:
                time.sleep(0.1)
            print("STILL RUNNING", [p for p in pids if alive(p)], flush=True)
            raise
    """
    work = tmp_path / "work"
    work.mkdir()
    driver = ns.popen(
        ns.python_argv(write_driver(tmp_path, body), str(tmp_path / "out.json"), str(work)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (work / "busy").exists():
            assert time.monotonic() < deadline and driver.poll() is None, "cells never finished"
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGINT)
        t0 = time.monotonic()
        stdout, stderr = driver.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == -signal.SIGINT, stderr[-4000:]
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr[-2000:]
    assert stdout.splitlines() == [
        "DELIVERED quick",
        "DELIVERED late",
        "INTERRUPTED",
        "STILL RUNNING []",
    ], stderr[-3000:]
    assert (work / "started-long1").exists() and not (work / "finished-long1").exists()
    assert seconds < 30


# --- throughput (opt-in) ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(
    not os.environ.get("HSI_BENCH_CELLS"), reason="set HSI_BENCH_CELLS=N to measure"
)
def test_cells_per_hour(ns, tmp_path):
    """Cells/hour for a ~12 s single-thread torch cell: serial, Ray with 1 and 2 workers.

    Also the engine's own cost per cell: wall time not spent inside cells, and the round
    trip of 40 empty cells. Run on an idle machine: other load skews cells/hour.
    """
    out = run_driver(
        ns,
        tmp_path,
        """
        def matmul_cell(payload, shared, ctx):
            import torch

            torch.manual_seed(payload)
            a = torch.randn(512, 512)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(3000):
                a = torch.tanh(a @ a / 512**0.5)
            return [time.perf_counter() - t0, time.process_time() - c0, torch.get_num_threads()]

        def empty_cell(payload, shared, ctx):
            return payload

        n = int(sys.argv[2])
        cells = [(f"c{i}", i) for i in range(n)]
        empty = [(f"e{i}", i) for i in range(40)]
        rows = {}
        t0 = time.perf_counter()
        res = d.run_cells(matmul_cell, cells, engine="serial", progress=False)
        rows["serial"] = [time.perf_counter() - t0, time.perf_counter() - t0, res, 0.0]
        for workers in (1, 2):
            t0 = time.perf_counter()
            with d.session(num_cpus=workers):
                t1 = time.perf_counter()
                res = d.run_cells(matmul_cell, cells, progress=False)
                t2 = time.perf_counter()
                d.run_cells(empty_cell, empty, progress=False)
                t3 = time.perf_counter()
            rows[f"ray-{workers}"] = [t2 - t1, time.perf_counter() - t0, res, t3 - t2]
        json.dump(rows, open(sys.argv[1], "w"))
        """,
        os.environ["HSI_BENCH_CELLS"],
        timeout=1800,
    )
    n = int(os.environ["HSI_BENCH_CELLS"])
    print(f"\nload average at the end: {os.getloadavg()}")
    for name, (run_s, total_s, res, empty_s) in out.items():
        walls = [w for w, _, _ in res.values()]
        cpu = [c for _, c, _ in res.values()]
        workers = 2 if name == "ray-2" else 1
        print(
            f"{name}: {n} cells in {run_s:.1f} s = {3600 * n / run_s:.0f} cells/h "
            f"({3600 * n / total_s:.0f} counting Ray start/stop, {total_s - run_s:.1f} s); "
            f"cell wall {min(walls):.1f}-{max(walls):.1f} s, cpu {min(cpu):.1f}-{max(cpu):.1f} s; "
            f"outside cells {(run_s * workers - sum(walls)) / n:.2f} s/cell; "
            f"40 empty cells {empty_s:.2f} s"
        )
        assert all(t == 1 for _, _, t in res.values())
