"""The two layers: `router` (the runtime that ships) and `router_tools` (what builds on it)."""

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
    for package in ("router", "router_service", "router_tools", "ai_space"):
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


def test_runtime_modules_are_private_and_tools_are_apart():
    """GIVEN the runtime package WHEN its files are listed THEN every module but the package's
    own entry points is private, and none imports `router_tools` (bar `__main__`)."""
    modules = sorted(p.name for p in (ROOT / "router").glob("*.py"))
    public = [m for m in modules if not m.startswith("_")]
    assert public == []
    for path in (ROOT / "router").glob("*.py"):
        if path.name == "__main__.py":
            continue
        assert not any(n.startswith("router_tools") for n in _imported_modules(path)), path


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
