"""The house rules, read from the source with ast: stages stay independent, the core knows no
stage, paths are built in one place, dvc.yaml names every module a stage runs, and no source
file points outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "pipeline"
STAGES = sorted(p for p in (PKG / "stages").glob("*.py") if p.name != "__init__.py")
CORE = ("data", "models", "training", "evaluation")

# Modules that cannot change what a stage writes: exception classes, and the MLflow mirror
# (the house rule: tracking.py only talks to MLflow). Every other imported module is a dep.
NOT_DEPS = {"pipeline/errors.py", "pipeline/tracking.py"}


def _module_file(name: str) -> Path | None:
    """``pipeline.a.b`` -> pipeline/a/b.py (or its package's __init__.py); None if not ours."""
    if name != "pipeline" and not name.startswith("pipeline."):
        return None
    base = REPO.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    """Dotted names of every module ``path`` imports, at any depth (functions included).

    ``package`` (default: from the path in the repo) resolves relative imports.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = path.relative_to(REPO).parts[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            out.add(str(node.args[0].value))
    return out


def _pipeline_imports(path: Path) -> set[Path]:
    """Files of the pipeline modules ``path`` imports directly, with their packages' __init__."""
    files = set()
    for name in _imports(path):
        f = _module_file(name)
        if f is None:
            continue
        files.add(f)
        parts = name.split(".")
        for i in range(1, len(parts)):
            init = _module_file(".".join(parts[:i]))
            if init is not None and init.name == "__init__.py":
                files.add(init)
    return files - {path}


def _closure(path: Path) -> set[str]:
    """Repo-relative files of ``path`` and every pipeline module it imports, transitively."""
    seen, todo = set(), [path]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(_pipeline_imports(f))
    return {f.relative_to(REPO).as_posix() for f in seen}


def _trivial_init(rel: str) -> bool:
    """A package __init__ holding only a docstring and constants runs no code worth tracking."""
    if not rel.endswith("__init__.py"):
        return False
    tree = ast.parse((REPO / rel).read_text())
    return all(isinstance(n, ast.Expr | ast.Assign) for n in tree.body)


def _stage_module_imports(path: Path, package: tuple[str, ...] | None = None) -> list[str]:
    return sorted(
        name
        for name in _imports(path, package)
        if name.startswith("pipeline.stages.") and _module_file(name) is not None
    )


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_no_stage_imports_another_stage(path):
    """One DVC stage = one module: what stages share lives in stages/common.py or the core."""
    others = [
        name
        for name in _stage_module_imports(path)
        if name not in ("pipeline.stages.common", f"pipeline.stages.{path.stem}")
    ]
    assert not others, f"{path.relative_to(REPO)} imports other stage modules: {others}"


def test_import_scan_sees_stage_imports(tmp_path):
    """The scan itself finds top-level, nested, relative and import_module imports."""
    assert "pipeline.stages.common" in _imports(PKG / "stages" / "prepare.py")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib\n"
        "from . import fetch\n"
        "def f():\n"
        "    from pipeline.stages.train import run\n"
        "    importlib.import_module('pipeline.stages.report')\n"
    )
    found = _stage_module_imports(probe, ("pipeline", "stages"))
    assert {"pipeline.stages.fetch", "pipeline.stages.train", "pipeline.stages.report"} <= set(
        found
    )


def test_core_knows_no_stage_and_no_tracking():
    bad = {}
    files = [p for sub in CORE for p in (PKG / sub).rglob("*.py")]
    files += [PKG / "io.py", PKG / "errors.py", PKG / "params.py"]
    for path in files:
        names = [
            n
            for n in _imports(path)
            if n.startswith(("pipeline.stages", "pipeline.tracking", "pipeline.cli"))
            or n.split(".")[0] in ("mlflow", "dvc")
        ]
        if names:
            bad[str(path.relative_to(REPO))] = sorted(names)
    assert not bad, f"core modules import stages/tracking/mlflow/dvc: {bad}"


_OUTPUT_ROOT = re.compile(r"^(data|models|reports)(/|$)")


def _path_literals(tree: ast.AST) -> list[str]:
    """Output-root strings used as paths: ``"data/..."`` anywhere, or a bare ``"models"`` etc.
    as an argument of ``Path(...)`` or an operand of ``/`` (not a dict key such as
    ``summary["models"]``)."""
    found = []
    for node in ast.walk(tree):
        parts: list[ast.AST] = []
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("Path", "PurePath"):
            parts = list(node.args)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts = [node.left, node.right]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value:
            parts = [node]
        found += [
            p.value
            for p in parts
            if isinstance(p, ast.Constant)
            and isinstance(p.value, str)
            and _OUTPUT_ROOT.match(p.value)
        ]
    return found


def test_path_literal_scan():
    tree = ast.parse(
        'a = Path("models") / x\nb = base / "reports"\nc = s["models"]\nd = "data/raw"\n'
        'e = "see the reports"\n'
    )
    assert sorted(_path_literals(tree)) == ["data/raw", "models", "reports"]


@pytest.mark.parametrize(
    "path", sorted(PKG.rglob("*.py")), ids=lambda p: p.relative_to(PKG).as_posix()
)
def test_output_paths_are_built_in_common(path):
    """data/..., models/... and reports/... are spelled only in stages/common.py, in the whole
    package: the core and tracking receive paths, they never build them."""
    if path == PKG / "stages" / "common.py":
        return
    spelled = _path_literals(ast.parse(path.read_text()))
    assert not spelled, f"{path.relative_to(REPO)} builds output paths itself: {spelled}"


def _dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(_dvc_stages()))
def test_dvc_deps_cover_every_module_the_stage_runs(stage):
    """A fix in any module a stage imports must make `dvc repro` run that stage again."""
    spec = _dvc_stages()[stage]
    words = spec["cmd"].split()
    assert words[:2] == ["hsi", words[1]], spec["cmd"]
    module = PKG / "stages" / f"{words[1]}.py"
    assert module.is_file(), f"{stage}: {module} not found"
    needed = {m for m in _closure(module) if m not in NOT_DEPS and not _trivial_init(m)}
    deps = [str(d) for d in spec.get("deps", [])]
    missing = sorted(m for m in needed if not _covered(m, deps))
    assert not missing, f"dvc.yaml stage {stage!r} lacks deps {missing}"


def test_dependency_closure_follows_imports():
    """The derivation reaches modules two imports away and packages imported by name."""
    closure = _closure(PKG / "stages" / "evaluate.py")
    assert "pipeline/evaluation/inference.py" in closure
    assert "pipeline/data/patches.py" in closure  # via evaluation/inference.py
    assert "pipeline/models/__init__.py" in closure  # via training/checkpoint.py
    assert _covered("pipeline/data/patches.py", ["pipeline/data"])
    assert not _covered("pipeline/data/patches.py", ["pipeline/dat"])


_OUTSIDE = re.compile(r"\.\./shared|/work/|/home/|/Users/|C:\\\\")


def test_no_source_file_points_outside_the_repo():
    files = [*PKG.rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    files += [REPO / n for n in ("Makefile", "dvc.yaml", "params.yaml", "pyproject.toml")]
    if (REPO / "tools").is_dir():
        files += list((REPO / "tools").rglob("*.py"))
    hits = [
        f"{f.relative_to(REPO)}:{i}: {line.strip()}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def _layout_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_layout_matches_the_tree():
    """Every module of the package is named in README "Layout", and every name there exists."""
    section = _layout_section()
    named = set(re.findall(r"[\w]+\.py", section))
    modules = {
        p.name for p in PKG.rglob("*.py") if not _trivial_init(p.relative_to(REPO).as_posix())
    }
    missing = sorted(modules - named)
    assert not missing, f'README "Layout" does not name {missing}'
    existing = {
        p.name for d in ("pipeline", "bench", "tools", "tests") for p in (REPO / d).rglob("*.py")
    }
    stale = sorted(named - existing)
    assert not stale, f'README "Layout" names files that do not exist: {stale}'
    for folder in ("bench/", "tools/", "tests/"):
        assert (REPO / folder).is_dir() == (folder in section), folder
