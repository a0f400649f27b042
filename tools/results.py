"""One protocol's committed results table, made by the pipeline itself, through the study.

Runs ``dvc exp run -S study.protocol=<protocol> -S study.seeds=[...] [-S ...] study/dvc.yaml``
(every model × seed × fold of ``study:`` trained, evaluated and compared by `hsi study`), then
copies the study's ``summary.{md,json}``, ``variants_maps.png`` and ``oa_ci.png`` into
``reports/results/<dataset>/<protocol>/`` with the exact command, commit and date written on
top. ``params.yaml`` is put back afterwards; the experiment stays in ``dvc exp show``. Do not
commit while it runs: ``dvc exp run`` detaches HEAD at the commit it started from and returns
the branch there when it ends, so such commits leave the branch (they stay in ``git reflog``).
``--publish-only`` stamps the current commit; ``--from DIR`` publishes a study made elsewhere
(e.g. on a GPU machine) with the command ``--made-by`` that made it.

    python tools/results.py --protocol leakfree --seeds 0 1 2
    python tools/results.py --protocol paper --seeds 0 1 2 --set "study.models=[hybridsn]"
    python tools/results.py --protocol paper --name paper-noval --set split.val_fraction=0 ...
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


FILES = ("variants_maps.png", "oa_ci.png")


def command(protocol: str, seeds: list[int], extra: list[str]) -> list[str]:
    cmd = ["dvc", "exp", "run", "-S", f"study.protocol={protocol}"]
    cmd += ["-S", f"study.seeds=[{','.join(map(str, seeds))}]"]
    for kv in extra:
        cmd += ["-S", kv]
    return [*cmd, "study/dvc.yaml"]


def study_dir(root: Path, dataset: str, protocol: str) -> Path:
    return root / "reports" / dataset / "study" / protocol


def publish(
    root: Path,
    dataset: str,
    protocol: str,
    shown: str,
    stamp: str,
    src: Path | None = None,
    name: str | None = None,
) -> Path:
    """Copy the study's outputs into the results folder ``name`` (default: the protocol's), the
    command written on top."""
    src = src or study_dir(root, dataset, protocol)
    dst = root / "reports" / "results" / dataset / (name or protocol)
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
    for name in FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return dst


def _verdict(s: dict, baseline: str, model: str) -> str:
    if model == baseline:
        return "baseline"
    t = s["comparisons"].get(baseline, {}).get(model)
    if t is None:
        return "–"
    p = t["test"]["p_value"]
    return t["verdict"] + (f" (p = {p:.2g})" if p is not None else "")


def _pm(stat: dict) -> str:
    if stat.get("n", 2) < 2:
        return f"{100 * stat['mean']:.2f}"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def table(root: Path, dataset: str) -> str:
    """One markdown table of every published protocol (the README's Results section)."""
    lines = [
        "| table | model | seeds × folds | OA (%) | AA (%) | kappa (%) | fold OA (%) "
        "| epochs run (best) | vs `hybridsn` | vs `svm` |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for path in sorted((root / "reports" / "results" / dataset).glob("*/summary.json")):
        s = json.loads(path.read_text())
        grid = f"{len(s['seeds'])} × {len(s['folds'])}"
        for m, r in s["models"].items():
            epochs = f"{r['epochs_run']['mean']:.0f} ({r['best_epoch']['mean']:.0f})"
            if not r["epochs_run"]["mean"]:
                epochs = "–"
            fold = _pm(r["fold_oa"]) if len(s["folds"]) > 1 else "–"
            lines.append(
                f"| `{path.parent.name}` | `{m}` | {grid} | {_pm(r['oa'])} | {_pm(r['aa'])} | "
                f"{_pm(r['kappa'])} | {fold} | {epochs} | {_verdict(s, 'hybridsn', m)} | "
                f"{_verdict(s, 'svm', m)} |"
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
    ap.add_argument(
        "--table",
        action="store_true",
        help="print every published protocol as one markdown table, run nothing",
    )
    ap.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="publish the study in this folder (made elsewhere) instead of running",
    )
    ap.add_argument("--made-by", default=None, help="with --from: the command that made it")  # fmt: skip
    ap.add_argument("--commit", default=None, help="with --from: the code commit that made it")  # fmt: skip
    ap.add_argument("--name", default=None,
                    help="results folder (default: the protocol), e.g. paper-noval for a variant")  # fmt: skip
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
    if args.source is not None:
        shown = args.made_by or f"hsi study (in {args.source})"
    try:
        if not args.publish_only and args.source is None:
            print(f"$ {shown}", flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
        dataset = yaml.safe_load(params_file.read_text())["dataset"]["name"]
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        rev = args.commit or rev
        stamp = f"{datetime.date.today()}, code at commit {rev or 'unknown'}"
        dst = publish(ROOT, dataset, args.protocol, shown, stamp, args.source, args.name)
        print(f"results written to {dst}")
    except subprocess.CalledProcessError as err:
        sys.exit(f"{shown}: failed with exit status {err.returncode}; nothing published")
    finally:
        params_file.write_text(original)


if __name__ == "__main__":
    main()
