"""The DVC state committed in git is what the code gives: a fresh `dvc repro prepare` changes
neither `dvc.lock` nor the prepare outputs that git tracks (meta, pca and split JSON). A change to
any dependency of those stages (code, params) must land with them regenerated:

    dvc repro prepare && git add dvc.lock data/prepared/indian_pines/*.json
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_integration import _copy_repo

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMITTED = (
    "dvc.lock",
    *(f"data/prepared/indian_pines/{n}.json" for n in ("meta", "pca", "split")),
)

pytestmark = pytest.mark.integration


def test_committed_prepare_state_is_what_the_code_gives(tmp_path):
    root = tmp_path / "hsi"
    _copy_repo(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HSI_DATA_DIR"] = ""
    before = {p: (REPO / p).read_text() for p in COMMITTED}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    proc = subprocess.run(
        [str(BIN / "dvc"), "repro", "prepare"], cwd=root, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    stale = [p for p in COMMITTED if (root / p).read_text() != before[p]]
    assert not stale, (
        f"committed DVC state is stale: {stale} change on a fresh `dvc repro prepare`; run it "
        "and commit them with the change"
    )
