"""Check the MLflow UI in a real browser: every run of an experiment is listed on its runs page
and charted on its chart view in a fresh browser profile, without a click.

    python tools/mlflow_browser_check.py [--store sqlite:///mlflow.db] \
        [--experiment indian_pines/classification] [--runs hybridsn-seed0 ...] \
        [--screenshot runs.png] [--chart-screenshot charts.png] [--view-screenshot view.png]

Starts `mlflow ui` on a free port of 127.0.0.1 against the store, opens each page in headless
Chromium with a new profile and reads the rendered DOM:

1. ``#/experiments/<id>/runs``: a row (a link to the run) for each run: the runs named by
   ``--runs``, else every active run of the experiment (read with the MLflow client);
2. ``...?compareRunsMode=CHART``: each run that logged metrics is a bar or a curve of the chart
   of each of its metrics that the view draws;
3. when the experiment has the saved view that ``pipeline.tracking`` writes (``hsi-compare``),
   its link shows the view's columns (model, seed, protocol, fold, test scores).

Exits 0 when all hold, 1 with one line saying what is missing, 2 when it cannot check (no
Chromium: on Debian ``apt-get install chromium``; the UI does not start; no such experiment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdp import DevTools, page_target  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
VIEW_TAG = "mlflow.sharedViewState.hsi-compare"
CHART_FIRST_ROWS = 10
"""MLflow's chart view draws the first 10 rows of the runs table unless told otherwise."""


class CheckFailed(Exception):
    """The UI does not show what it should (exit 1)."""


class CannotCheck(Exception):
    """The check could not be run (exit 2)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    raise CannotCheck("no Chromium found; on Debian: apt-get install -y chromium")


@contextmanager
def mlflow_ui(store: str, timeout: float):
    """``mlflow ui`` on a free port of 127.0.0.1; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryFile("w+") as logfile:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store]
            + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        try:
            end = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    logfile.seek(0)
                    last = (logfile.read().strip().splitlines() or ["no output"])[-1]
                    raise CannotCheck(f"mlflow ui exited with {proc.returncode}: {last}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError as e:
                    if time.monotonic() > end:
                        raise CannotCheck(
                            f"mlflow ui at {url} did not answer in {timeout:.0f} s"
                        ) from e
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stop_group(proc: subprocess.Popen) -> None:
    """End Chromium and the helper processes it started (its own process group)."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)  # helpers flush the profile before it is removed


@contextmanager
def fresh_page(chromium: str, url: str, size: tuple[int, int]):
    """``url`` in headless Chromium with a new, empty profile; yields the DevTools tab."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hsi-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}"]
            + [f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        tab = None
        try:
            tab = DevTools(page_target(port, timeout=60), timeout=120)
            yield tab
        except (OSError, TimeoutError) as e:
            raise CannotCheck(f"Chromium: {e}") from e
        finally:
            if tab is not None:
                tab.close()
            _stop_group(proc)


MATCHING = (
    "((document.body && document.body.innerText || '').match(/(\\d+) matching runs?/) || [])[1]"
)
RUN_LINKS = """(() => Array.from(document.querySelectorAll('.ag-row a[href*="/runs/"]'))
  .map(a => [a.getAttribute('href').split('/runs/')[1].split(/[?/#]/)[0], a.innerText.trim()])
)()"""
SCROLL_ROWS = """(() => {
  const v = document.querySelector('.ag-body-viewport');
  const before = v ? v.scrollTop : 0;
  if (v) v.scrollTop = before + Math.max(100, v.clientHeight * 0.8);
  window.scrollBy(0, window.innerHeight * 0.8);
  return v ? v.scrollTop !== before : false;
})()"""
SCROLL_COLUMNS = """(() => {
  const v = document.querySelector('.ag-center-cols-viewport');
  const h = document.querySelector('.ag-body-horizontal-scroll-viewport');
  const el = h || v;
  if (!el) return false;
  const before = el.scrollLeft;
  el.scrollLeft = before + Math.max(100, el.clientWidth * 0.8);
  if (v && v !== el) v.scrollLeft = el.scrollLeft;
  return el.scrollLeft !== before;
})()"""
HEADERS = """Array.from(document.querySelectorAll('.ag-header-cell[col-id]'))
  .map(h => h.getAttribute('col-id'))"""
CARDS = "document.querySelectorAll('[data-testid=\"experiment-view-compare-runs-card\"]').length"
SCROLL_TO_CARD = """((i) => {
  const c = document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')[i];
  if (c) c.scrollIntoView({block: 'center'});
  return Boolean(c);
})(%d)"""
SERIES = """(() => {
  const out = {};
  document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]').forEach(card => {
    const title = (card.innerText || '').split('\\n')[0].trim();
    const plot = card.querySelector('.js-plotly-plot');
    if (!title || !plot || !Array.isArray(plot.data)) return;
    const ids = new Set();
    for (const t of plot.data) {
      if (typeof t.uuid === 'string') ids.add(t.uuid);
      for (const arr of [t.x, t.y]) {
        if (Array.isArray(arr)) arr.forEach(v => {
          if (typeof v === 'string' && /^[0-9a-f]{32}$/.test(v)) ids.add(v);
        });
      }
    }
    out[title] = Array.from(ids);
  });
  return out;
})()"""


def expected_runs(store: str, experiment: str, names: list[str] | None) -> tuple[str, list, int]:
    """The experiment's id, the runs the UI must show (by ``names``, else every active run) and
    the number of rows of its runs table."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CannotCheck(f"no experiment {experiment!r} in {store}")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    rows = len(runs)
    if names:
        wanted = [r for r in runs if r.info.run_name in names]
        absent = sorted(set(names) - {r.info.run_name for r in wanted})
        if absent:
            raise CannotCheck(f"no run named {', '.join(absent)} in {experiment!r} of {store}")
        runs = wanted
    if not runs:
        raise CannotCheck(f"experiment {experiment!r} of {store} has no active run")
    return exp.experiment_id, runs, rows


def check_runs_page(tab: DevTools, runs: list, wait: float) -> str:
    """Every run is a row of the runs table: its link is in the DOM without a click."""
    if not tab.wait_for(f"Number({MATCHING}) > 0 && {RUN_LINKS}.length > 0", timeout=wait):
        raise CheckFailed(f"runs page: no runs table after {wait:.0f} s")
    time.sleep(1.0)
    seen: dict[str, str] = {}
    for _ in range(200):
        seen.update(dict(tab.js(RUN_LINKS) or []))
        if not tab.js(SCROLL_ROWS):
            seen.update(dict(tab.js(RUN_LINKS) or []))
            break
        time.sleep(0.3)
    tab.js(
        "(() => { const v = document.querySelector('.ag-body-viewport'); "
        "if (v) v.scrollTop = 0; window.scrollTo(0, 0); })()"
    )
    missing = [r for r in runs if r.info.run_id not in seen]
    if missing:
        nested = [r for r in missing if r.data.tags.get("mlflow.parentRunId")]
        why = f" ({len(nested)} nested under a parent run, collapsed)" if nested else ""
        raise CheckFailed(
            f"runs page lists {len(runs) - len(missing)} of {len(runs)} runs without a click; "
            f"missing{why}: {', '.join(sorted(r.info.run_name for r in missing))}"
        )
    return f"runs page: all {len(runs)} runs listed ({tab.js(MATCHING)} matching runs)"


def check_chart_view(tab: DevTools, runs: list, wait: float) -> str:
    """Each run with metrics is a series of the chart of each of its metrics that is drawn."""
    charted = [r for r in runs if r.data.metrics]
    if not charted:
        return "chart view: no run logged a metric"
    if not tab.wait_for(f"{CARDS} > 0", timeout=wait):
        raise CheckFailed(f"chart view: no chart after {wait:.0f} s")
    series: dict[str, set[str]] = {}
    stable, last = 0, None
    end = time.monotonic() + wait
    while stable < 2 and time.monotonic() < end:
        for i in range(int(tab.js(CARDS) or 0)):
            tab.js(SCROLL_TO_CARD % i)
            time.sleep(0.2)
            for title, ids in (tab.js(SERIES) or {}).items():
                series.setdefault(title, set()).update(ids)
        snapshot = {k: len(v) for k, v in series.items()}
        stable = stable + 1 if snapshot == last and snapshot else 0
        last = snapshot
        time.sleep(1.0)
    tab.js(SCROLL_TO_CARD % 0)
    if not series:
        raise CheckFailed(f"chart view: {tab.js(CARDS)} chart cards but no chart drawn")
    names = {r.info.run_id: r.info.run_name for r in runs}
    absent = [r for r in charted if not any(r.info.run_id in ids for ids in series.values())]
    gaps = {
        metric: sorted(
            names[r.info.run_id]
            for r in charted
            if metric in r.data.metrics and r.info.run_id not in ids
        )
        for metric, ids in series.items()
    }
    gaps = {k: v for k, v in gaps.items() if v}
    hint = ""
    if len(runs) > CHART_FIRST_ROWS:
        hint = f" (the UI charts the first {CHART_FIRST_ROWS} rows of the runs table by default)"
    if absent:
        raise CheckFailed(
            f"chart view: {len(absent)} of {len(charted)} runs with metrics are in no chart"
            f"{hint}: {', '.join(sorted(r.info.run_name for r in absent))}"
        )
    if gaps:
        metric, lacking = next(iter(sorted(gaps.items())))
        raise CheckFailed(
            f"chart view: {len(gaps)} charts lack runs that logged their metric{hint}, e.g. "
            f"{metric} lacks {', '.join(lacking)}"
        )
    return f"chart view: {len(series)} charts, each run with metrics drawn in its charts"


def view_columns(store: str, experiment_id: str, runs: list) -> list[str] | None:
    """The columns of the experiment's ``hsi-compare`` view that the runs have, or None."""
    from mlflow import MlflowClient

    tags = MlflowClient(store).get_experiment(experiment_id).tags
    if VIEW_TAG not in tags:
        return None
    columns = json.loads(json.loads(tags[VIEW_TAG])["state"]).get("selectedColumns", [])
    have = {f"params.`{k}`" for r in runs for k in r.data.params}
    have |= {f"metrics.`{k}`" for r in runs for k in r.data.metrics}
    have |= {f"tags.`{k}`" for r in runs for k in r.data.tags}
    return [c for c in columns if c in have]


def check_view(tab: DevTools, columns: list[str], wait: float) -> str:
    applied = f"{HEADERS}.some(c => /^(params|metrics|tags)\\./.test(c))"
    if not tab.wait_for(f"Number({MATCHING}) > 0 && {applied}", timeout=wait):
        raise CheckFailed(f"saved view hsi-compare: no param/metric column after {wait:.0f} s")
    time.sleep(1.0)
    seen: set[str] = set()
    for _ in range(100):
        seen.update(tab.js(HEADERS) or [])
        if not tab.js(SCROLL_COLUMNS):
            seen.update(tab.js(HEADERS) or [])
            break
        time.sleep(0.3)
    tab.js(
        "(() => { const h = document.querySelector('.ag-body-horizontal-scroll-viewport'); "
        "if (h) h.scrollLeft = 0; })()"
    )
    missing = [c for c in columns if c not in seen]
    if missing:
        raise CheckFailed(f"saved view hsi-compare: columns not shown: {', '.join(missing)}")
    return f"saved view hsi-compare: {len(columns)} columns shown"


def run_checks(args) -> list[str]:
    """Runs page, chart view and (when the experiment has it) the saved comparison view.

    With more than 10 rows MLflow's default chart view draws only the first 10, so the charts
    are then checked through the saved view, which shows all runs.
    """
    chromium = browser()
    exp_id, runs, rows = expected_runs(args.store, args.experiment, args.runs)
    columns = view_columns(args.store, exp_id, runs)
    lines = []
    tall = min(12000, max(args.height, 320 + 44 * rows))
    with mlflow_ui(args.store, args.timeout) as url:
        page = f"{url}/#/experiments/{exp_id}/runs"
        view = f"{page}?viewStateShareKey=hsi-compare"
        with fresh_page(chromium, page, (args.width, tall)) as tab:
            lines.append(check_runs_page(tab, runs, args.wait))
            if args.screenshot:
                tab.screenshot(args.screenshot)
        charts = f"{page}?compareRunsMode=CHART"
        if rows > CHART_FIRST_ROWS and columns is not None:
            charts = f"{view}&compareRunsMode=CHART"
            lines.append(
                f"{rows} rows: the default chart view draws the first {CHART_FIRST_ROWS}; "
                "checking the charts of the saved view hsi-compare, which shows all"
            )
        with fresh_page(chromium, charts, (args.width, args.height)) as tab:
            lines.append(check_chart_view(tab, runs, args.wait))
            if args.chart_screenshot:
                tab.screenshot(args.chart_screenshot)
        if columns:
            with fresh_page(chromium, view, (max(args.width, 2400), tall)) as tab:
                lines.append(check_view(tab, columns, args.wait))
                if args.view_screenshot:
                    tab.screenshot(args.view_screenshot)
        lines.append(f"runs page: {page}")
        lines.append(f"chart view: {charts}")
        if columns:
            lines.append(f"saved view: {view}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="sqlite:///mlflow.db", help="backend store URI")
    ap.add_argument("--experiment", default="indian_pines/classification")
    ap.add_argument("--runs", nargs="+", metavar="NAME", help="run names (default: every run)")
    ap.add_argument("--screenshot", type=Path, help="PNG of the runs page")
    ap.add_argument("--chart-screenshot", type=Path, help="PNG of the chart view")
    ap.add_argument("--view-screenshot", type=Path, help="PNG of the saved comparison view")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--wait", type=float, default=120, help="seconds a page gets to render")
    ap.add_argument("--timeout", type=float, default=180, help="seconds mlflow ui gets to start")
    args = ap.parse_args(argv)
    for shot in (args.screenshot, args.chart_screenshot, args.view_screenshot):
        if shot:
            shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        lines = run_checks(args)
    except CheckFailed as e:
        print(f"mlflow_browser_check: FAIL: {e}", file=sys.stderr)
        return 1
    except CannotCheck as e:
        print(f"mlflow_browser_check: cannot check: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
