"""The layers and their contracts (pyproject.toml, `make lint`): `router` (the runtime that
ships), `router_service` and `router_tools` above it, the benchmarks on top; public names only
across packages; no import cycle anywhere, hidden in a function or not."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import router

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_project(dest: Path) -> Path:
    for package in ("router", "router_service", "router_tools", "ai_space", "bench"):
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.md", "Dockerfile*"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                       "PYTHONPATH": str(project)})


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("router/_policy.py", "from router_tools import cli as _cli", "router_tools"),
    ("router/_schema.py", "import torch as _torch", "torch"),
    ("router_tools/cost.py", "from router._schedule import Schedule as _Schedule",
     "router._schedule"),
    ("bench/decision.py", "from router_service._door import Door as _Door",
     "router_service._door"),
])
def test_a_reverse_import_breaks_the_contract(tmp_path: Path, module: str, line: str,
                                              broken: str):
    """GIVEN a copy of the project WHEN its contracts run as they are THEN they hold; WHEN a
    runtime module imports a tool (or torch) THEN `lint-imports` fails and names the import."""
    project = _copy_project(tmp_path)
    clean = _lint_imports(project)
    assert clean.returncode == 0, clean.stdout[-2000:]

    target = project / module
    target.write_text(target.read_text() + f"\n{line}\n")
    broken_run = _lint_imports(project)
    assert broken_run.returncode == 1
    assert f"{module[:-3].replace('/', '.')} -> {broken}" in broken_run.stdout
    assert "BROKEN" in broken_run.stdout


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize(("module", "code"), [
    ("router/_errors.py", "def _late() -> None:\n    from router import _status\n"),
    ("router/_errors.py", "from typing import TYPE_CHECKING as _TC\nif _TC:\n"
                          "    from router._status import STATUS as _STATUS\n"),
    ("router_service/_metrics.py", "def _late() -> None:\n    from router_service import _app\n"),
    ("bench/common.py", "def _late() -> None:\n    from bench import warm\n"),
])
def test_a_new_import_cycle_breaks_the_contract(tmp_path: Path, module: str, code: str):
    """GIVEN a copy of the project WHEN a module imports, inside a function or only for type
    checking, a module that imports it THEN `lint-imports` (make lint) fails, naming the
    package with the cycle: a cycle cannot hide from it."""
    project = _copy_project(tmp_path)
    target = project / module
    target.write_text(target.read_text() + "\n" + code)
    broken_run = _lint_imports(project)
    assert broken_run.returncode == 1, broken_run.stdout[-2000:]
    package = module.split("/")[0]
    assert f"No cycles are allowed in {package}." in broken_run.stdout
    assert "BROKEN" in broken_run.stdout


def test_runtime_modules_are_private_and_import_no_layer_above():
    """GIVEN the runtime package WHEN its files are listed THEN every module is private (no
    `__main__` either: `python -m router_tools` is the CLI), and none imports the service or a
    tool; the functions' entries use `router`'s public names only."""
    modules = sorted(p.name for p in (ROOT / "router").glob("*.py"))
    assert [m for m in modules if not m.startswith("_")] == []
    assert "__main__.py" not in modules
    for path in (ROOT / "router").glob("*.py"):
        assert not any(n.startswith(("router_tools", "router_service"))
                       for n in _imported_modules(path)), path
    entries = sorted((ROOT / "packages").glob("*/*/__main__.py"))
    assert len(entries) == 2
    for path in entries:
        imported = _imported_modules(path)
        assert "router" in imported
        assert not any(n.startswith("router.") for n in imported), path


def test_public_names_load_lazily():
    """GIVEN a fresh interpreter WHEN it imports `router` and takes WebFunction THEN the chat
    router itself, the fallback engine and the schemas are not loaded yet (cold start)."""
    code = ("import sys, router; router.WebFunction; "
            "print(sorted(m for m in sys.modules if m.startswith('router')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    loaded = set(ast.literal_eval(out.strip()))
    assert "router._do_event" in loaded
    assert not loaded & {"router._app", "router._fallback", "router._schema",
                         "router._endpoints"}
    assert set(dir(router)) == set(router.__all__)
    with pytest.raises(AttributeError):
        _ = router.not_a_name
