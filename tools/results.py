"""One protocol's committed results table, made by the pipeline itself.

Runs ``dvc exp run -S protocol=<protocol> -S train.seeds=[...] [-S ...] report`` (every variant ×
seed trained, evaluated and compared by the `report` stage), then copies the report's
``summary.{md,json}`` and ``variants_maps.png`` into ``reports/results/<dataset>/<protocol>/``
with the exact command, commit and date written on top. ``params.yaml`` is put back afterwards;
the experiment stays in ``dvc exp show``. Do not commit while it runs: ``dvc exp run`` detaches
HEAD at the commit it started from and returns the branch there when it ends, so such commits
leave the branch (they stay in ``git reflog``). ``--publish-only`` stamps the current commit.

    python tools/results.py --protocol paper --seeds 0 1 2 --set train.early_stopping=10
    python tools/results.py --protocol leakfree --seeds 0 1 2 --set train.early_stopping=10
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def command(protocol: str, seeds: list[int], extra: list[str]) -> list[str]:
    cmd = ["dvc", "exp", "run", "-S", f"protocol={protocol}"]
    cmd += ["-S", f"train.seeds=[{','.join(map(str, seeds))}]"]
    for kv in extra:
        cmd += ["-S", kv]
    return [*cmd, "report"]


def publish(root: Path, dataset: str, protocol: str, shown: str, stamp: str) -> Path:
    """Copy the `report` stage's outputs into the results folder, the command written on top."""
    src = root / "reports" / dataset
    dst = root / "reports" / "results" / dataset / protocol
    summary = json.loads((src / "summary.json").read_text())
    if summary["protocol"] != protocol:
        sys.exit(f"{src / 'summary.json'}: protocol {summary['protocol']!r}, expected {protocol!r}")
    dst.mkdir(parents=True, exist_ok=True)
    summary["made_by"] = {"command": shown, "stamp": stamp}
    tmp = dst / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(dst / "summary.json")
    md = (src / "summary.md").read_text()
    head, _, rest = md.partition("\n")
    tmp = dst / "summary.md.tmp"
    tmp.write_text(f"{head}\n\nMade by `{shown}` ({stamp}).\n{rest}")
    tmp.replace(dst / "summary.md")
    shutil.copyfile(src / "variants_maps.png", dst / "variants_maps.png")
    return dst


def table(root: Path, dataset: str) -> str:
    """One markdown table of every published protocol (the README's Results section)."""
    lines = [
        "| protocol | model | OA (%) | AA (%) | kappa (%) | epochs run (best) | vs `hybridsn` |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for path in sorted((root / "reports" / "results" / dataset).glob("*/summary.json")):
        s = json.loads(path.read_text())
        for m, r in s["models"].items():
            pm = {
                k: f"{100 * r[k]['mean']:.2f} ± {100 * r[k]['std']:.2f}"
                for k in ("oa", "aa", "kappa")
            }
            epochs = f"{r['epochs_run']['mean']:.0f} ({r['best_epoch']['mean']:.0f})"
            t = s["comparisons"].get(m)
            verdict = "baseline" if t is None else t["verdict"]
            if t and t["paired_t"]["p_value"] is not None:
                verdict += f" (p = {t['paired_t']['p_value']:.2g})"
            lines.append(
                f"| `{s['protocol']}` | `{m}` | {pm['oa']} | {pm['aa']} | {pm['kappa']} | "
                f"{epochs} | {verdict} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=["paper", "leakfree", "custom"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another `dvc exp run -S` override")  # fmt: skip
    ap.add_argument("--publish-only", action="store_true",
                    help="copy the current report without running (after an interrupted run)")  # fmt: skip
    ap.add_argument("--table", action="store_true",
                    help="print every published protocol as one markdown table, run nothing")  # fmt: skip
    args = ap.parse_args()
    if args.table:
        print(table(ROOT, yaml.safe_load((ROOT / "params.yaml").read_text())["dataset"]["name"]))
        return
    if not args.protocol:
        ap.error("--protocol is required (or --table)")
    cmd = command(args.protocol, args.seeds, args.set)
    shown = shlex.join(cmd)
    params_file = ROOT / "params.yaml"
    original = params_file.read_text()
    try:
        if not args.publish_only:
            print(f"$ {shown}", flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
        dataset = yaml.safe_load(params_file.read_text())["dataset"]["name"]
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        stamp = f"{datetime.date.today()}, code at commit {rev or 'unknown'}"
        print(f"results written to {publish(ROOT, dataset, args.protocol, shown, stamp)}")
    except subprocess.CalledProcessError as err:
        sys.exit(f"{shown}: failed with exit status {err.returncode}; nothing published")
    finally:
        params_file.write_text(original)


if __name__ == "__main__":
    main()
