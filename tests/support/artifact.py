"""Build the `ask` function the way `doctl serverless deploy` does, into a temporary project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs first in a bare interpreter (-S -I: no site-packages), as the runtime's prelauncher does:
# activate the function's virtualenv, then APPEND the function folder to the path.
ACTIVATE = """
import runpy, sys
fn_dir = sys.argv[1]
runpy.run_path(fn_dir + "/virtualenv/bin/activate_this.py")
sys.path.append(fn_dir)
"""


def build_ask(dest: Path, extra_tool: str | None = None) -> Path:
    """Copy the project into `dest`, run build.sh, return the function folder.

    `extra_tool` names a tool module to add to `router_tools/` first, to show it never ships.
    """
    (dest / "packages" / "chat").mkdir(parents=True)
    shutil.copytree(ROOT / "packages" / "chat" / "ask", dest / "packages" / "chat" / "ask",
                    ignore=shutil.ignore_patterns("virtualenv", "router", "__pycache__"))
    for package in ("router", "router_tools"):
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    if extra_tool:
        (dest / "router_tools" / f"{extra_tool}.py").write_text('"""A new tool."""\n')
    shutil.copytree(ROOT / "requirements", dest / "requirements")
    shutil.copytree(ROOT / "lib", dest / "lib")
    fn_dir = dest / "packages" / "chat" / "ask"
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PYTHON": sys.executable,
           "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    build = subprocess.run(["bash", str(fn_dir / "build.sh")], env=env, capture_output=True,
                           text=True, timeout=600)
    if build.returncode != 0:
        raise RuntimeError(f"build.sh failed:\n{build.stderr[-2000:]}")
    return fn_dir


def bare_python() -> str:
    """The interpreter the venv was made from: a plain CPython 3.11 like the runtime's."""
    return os.path.realpath(str(getattr(sys, "_base_executable", sys.executable)))


def run_in_artifact(fn_dir: Path, script: str, env: dict[str, str], cwd: Path,
                    timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `script` in a bare interpreter that sees only the built function."""
    return subprocess.run([bare_python(), "-S", "-I", "-c", ACTIVATE + script, str(fn_dir)],
                          env={"PATH": "/usr/bin:/bin", **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
