"""`make compare`: every DVC experiment's variants × seeds in one table that fits 100 columns.

Reads ``dvc exp show --json`` (run here, or a saved file given as the argument) and prints one row
per experiment × model × seed with only what a comparison needs: model, seed, protocol, test OA,
AA and kappa (%), and training time. ``dvc exp show`` itself collapses its dozens of columns to
"…" at this width.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

WIDTH = 100
RUN = re.compile(
    r"(?:^|/)reports/[^/]+/(?P<model>[^/]+)-seed(?P<seed>\d+)/(?P<file>[a-z_]+)\.json$"
)
COLUMNS = (  # header, width, align
    ("experiment", 22, "<"),
    ("model", 14, "<"),
    ("seed", 4, ">"),
    ("protocol", 16, "<"),
    ("OA %", 6, ">"),
    ("AA %", 6, ">"),
    ("kappa %", 7, ">"),
    ("train time", 10, ">"),
)


def _entries(show: list[dict]) -> Iterator[tuple[str, dict]]:
    """(label, data) of the workspace, each baseline commit and each experiment on it."""
    for base in show:
        label = "workspace" if base["rev"] == "workspace" else base.get("name") or base["rev"][:7]
        if base.get("data"):
            yield label, base["data"]
        for exp in base.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or rev["rev"][:7]
                if rev.get("data"):
                    yield name, rev["data"]


def _files(data: dict, section: str) -> dict[str, dict]:
    return {
        path: (entry or {}).get("data") or {}
        for path, entry in (data.get(section) or {}).items()
        if (entry or {}).get("data")
    }


def protocol(params: dict) -> str:
    """The `protocol` param when present, else split mode and where PCA was fitted."""
    if params.get("protocol") and params["protocol"] != "custom":
        return str(params["protocol"])
    split = (params.get("split") or {}).get("mode", "?")
    fit = (params.get("pca") or {}).get("fit_on", "?")
    return f"{split}, pca:{fit}"


def rows(show: list[dict]) -> list[dict]:
    out = []
    for label, data in _entries(show):
        params = next(iter(_files(data, "params").values()), {})
        runs: dict[tuple[str, int], dict] = {}
        for path, values in _files(data, "metrics").items():
            m = RUN.search(path)
            if m:
                runs.setdefault((m["model"], int(m["seed"])), {})[m["file"]] = values
        for (model, seed), files in sorted(runs.items()):
            metrics, train = files.get("metrics", {}), files.get("train", {})
            if "oa" not in metrics:
                continue
            out.append(
                {
                    "experiment": label,
                    "model": model,
                    "seed": seed,
                    "protocol": protocol(params),
                    "oa": metrics.get("oa"),
                    "aa": metrics.get("aa"),
                    "kappa": metrics.get("kappa"),
                    "train_time_s": train.get("train_time_s"),
                }
            )
    return out


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _time(s) -> str:
    if s is None:
        return "—"
    s = round(s)
    return f"{s} s" if s < 600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def render(table: list[dict]) -> str:
    cells = [
        [
            r["experiment"],
            r["model"],
            str(r["seed"]),
            r["protocol"],
            _pct(r["oa"]),
            _pct(r["aa"]),
            _pct(r["kappa"]),
            _time(r["train_time_s"]),
        ]
        for r in table
    ]
    lines = []
    for values in [[c[0] for c in COLUMNS], *cells]:
        parts = [f"{_fit(v, w):{a}{w}}" for v, (_, w, a) in zip(values, COLUMNS, strict=True)]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for _, w, _ in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv:
        show = json.loads(Path(argv[0]).read_text())
    else:
        dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
        proc = subprocess.run([dvc, "exp", "show", "--json"], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"compare: `dvc exp show --json` failed: {proc.stderr.strip()}", file=sys.stderr)
            return 1
        show = json.loads(proc.stdout)
    table = rows(show)
    if not table:
        print("compare: no experiment has test metrics yet; run `dvc repro` or `dvc exp run`")
        return 1
    print(render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
