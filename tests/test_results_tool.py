"""`make results`: the committed results tables carry the exact command that made them."""

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "results", Path(__file__).resolve().parents[1] / "tools" / "results.py"
)
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)


def _report(root: Path, protocol: str) -> None:
    d = root / "reports" / "indian_pines" / "study" / protocol
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"protocol": protocol, "seeds": [0, 1, 2]}))
    (d / "summary.md").write_text(f"# indian_pines, protocol `{protocol}`\n\nbody\n")
    (d / "variants_maps.png").write_bytes(b"png")


def test_command_names_protocol_seeds_overrides_and_target():
    cmd = results.command("leakfree", [0, 1, 2], ["train.early_stopping=10"])
    assert cmd == [
        "dvc", "exp", "run", "-S", "study.protocol=leakfree", "-S", "study.seeds=[0,1,2]",
        "-S", "train.early_stopping=10", "study/dvc.yaml",
    ]  # fmt: skip


def test_publish_writes_the_command_into_both_summaries(tmp_path):
    _report(tmp_path, "leakfree")
    dst = results.publish(tmp_path, "indian_pines", "leakfree", "dvc exp run X", "today")
    assert dst == tmp_path / "reports/results/indian_pines/leakfree"
    md = (dst / "summary.md").read_text()
    assert md.startswith("# indian_pines, protocol `leakfree`\n\nMade by `dvc exp run X` (today).")
    assert md.endswith("body\n")
    assert json.loads((dst / "summary.json").read_text())["made_by"]["command"] == "dvc exp run X"
    assert (dst / "variants_maps.png").read_bytes() == b"png"


def test_publish_refuses_a_report_of_another_protocol(tmp_path):
    _report(tmp_path, "paper")
    src = tmp_path / "reports/indian_pines/study/paper"
    with pytest.raises(SystemExit, match="protocol 'paper', expected 'leakfree'"):
        results.publish(tmp_path, "indian_pines", "leakfree", "cmd", "today", src)
    assert not (tmp_path / "reports/results").exists()


def test_table_lists_every_protocol_and_variant_with_its_verdict(tmp_path):
    stat = {"mean": 0.99, "std": 0.001, "n": 3}
    for protocol, verdict in (("leakfree", "no evidence"), ("paper", "better")):
        d = tmp_path / "reports/results/indian_pines" / protocol
        d.mkdir(parents=True)
        row = {k: stat for k in ("oa", "aa", "kappa")}
        row |= {"epochs_run": {"mean": 30.0}, "best_epoch": {"mean": 20.0}}
        row |= {"fold_oa": {"mean": 0.98, "std": 0.02, "n": 5}}
        comp = {"verdict": verdict, "test": {"p_value": 0.012}}
        summary = {
            "protocol": protocol,
            "seeds": [0, 1, 2],
            "folds": [0, 1, 2, 3, 4] if protocol == "leakfree" else [0],
            "models": {"hybridsn": row, "hybridsn_se": row},
            "comparisons": {"hybridsn": {"hybridsn_se": comp}},
        }
        (d / "summary.json").write_text(json.dumps(summary))
    lines = results.table(tmp_path, "indian_pines").splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| `leakfree` | `hybridsn` | 3 × 5 | 99.00 ± 0.10 |")
    assert lines[2].endswith("| 98.00 ± 2.00 | 30 (20) | baseline | – |")
    assert lines[5].endswith(
        "| `hybridsn_se` | 3 × 1 | 99.00 ± 0.10 | 99.00 ± 0.10 | 99.00 ± 0.10 | – | 30 (20) | "
        "better (p = 0.012) | – |"
    )
