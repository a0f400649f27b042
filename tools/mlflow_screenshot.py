"""Look at the MLflow UI in a real browser: start `mlflow ui` on a free port of 127.0.0.1, open
an experiment's comparison page in headless Chromium and save a screenshot.

    python tools/mlflow_screenshot.py [--store sqlite:///mlflow.db] \
        [--experiment indian_pines/classification] [--out docs/mlflow-ui.png]

Needs Chromium (Debian: ``apt-get install chromium``). Run it in the folder holding the store
(the repo root after ``dvc repro``). Exits non-zero, saying why, when the UI does not come up,
the experiment is missing or Chromium writes no image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdp import DevTools, page_target  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow ui at {url} did not answer within {timeout:.0f} s")


def experiment_id(url: str, name: str) -> str:
    q = urllib.parse.urlencode({"experiment_name": name})
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{q}") as r:
            return json.loads(r.read())["experiment"]["experiment_id"]
    except OSError as e:
        sys.exit(f"experiment {name!r} not found in the store ({e})")


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    sys.exit("no Chromium found; on Debian: apt-get install chromium")


EXPAND = """(() => {
  const sel = 'button[data-component-id*="runnamecellrenderer"]';
  const buttons = Array.from(document.querySelectorAll(sel));
  buttons.forEach(b => b.click());
  document.querySelectorAll('button[aria-label="Close"]').forEach(b => b.click());
  return buttons.length;
})()"""
ROWS = "document.querySelectorAll('.ag-center-cols-container [role=row]').length"


def shoot(chromium: str, page: str, out: Path, size: str, wait: float) -> None:
    """Open ``page``, wait for the runs table, expand parent runs (a report's children), close
    side panels, and save a PNG."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hsi-chromium-") as profile:
        browser_proc = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                page,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            tab = DevTools(page_target(port, timeout=120), timeout=120)
            if not tab.wait_for(f"{ROWS} > 0", timeout=wait):
                sys.exit(f"{page}: no runs table after {wait:.0f} s")
            before = tab.js(ROWS)
            expanded = tab.js(EXPAND)
            tab.wait_for(f"{ROWS} > {before}", timeout=10 if expanded else 0)
            time.sleep(2)
            tab.screenshot(out)
            tab.close()
        finally:
            browser_proc.terminate()
            try:
                browser_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                browser_proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="sqlite:///mlflow.db", help="backend store URI")
    ap.add_argument("--experiment", default="indian_pines/classification")
    ap.add_argument("--out", default="docs/mlflow-ui.png")
    ap.add_argument("--size", default="1600,900", help="window width,height in pixels")
    ap.add_argument("--wait", type=float, default=120, help="seconds the page gets to render")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for mlflow ui")
    args = ap.parse_args(argv)

    chromium = browser()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    ui = subprocess.Popen(
        [mlflow, "ui", "--backend-store-uri", args.store, "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(url, ui, args.timeout)
        exp = experiment_id(url, args.experiment)
        page = f"{url}/#/experiments/{exp}/runs"
        out = Path(args.out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        shoot(chromium, page, out, args.size, args.wait)
        print(f"{page} -> {out} ({out.stat().st_size // 1024} KiB)")
    finally:
        ui.terminate()
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ui.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
