"""DigitalOcean's deployer's own `${VAR}` substitution, run with node on our project.yml.

The code is @nimbella/nimbella-deployer's (the deployer DigitalOcean's functions-deployer is
forked from; `substituteFromEnvAndFiles` in its src/util.ts), installed from npm into
build/npm (ignored by git; `make deployer` or the first test run installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "@nimbella/nimbella-deployer@4.3.10"
PREFIX = ROOT / "build" / "npm"
INDEX = PREFIX / "node_modules" / "@nimbella" / "nimbella-deployer" / "lib" / "index.js"
RUNNER = Path(__file__).with_name("deployer_subst.js")


def ensure_deployer() -> str | None:
    """Install the deployer into build/npm if needed; None when ready, else why it is not."""
    if INDEX.is_file():
        return None
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        return "node and npm are not installed: cannot run DigitalOcean's deployer code"
    PREFIX.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "--omit=dev",
         "--ignore-scripts", "--no-save", PACKAGE],
        capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not INDEX.is_file():
        return f"npm install {PACKAGE} failed: {done.stderr.strip()[-300:]}"
    return None


def substitute(project_yml: Path, env_file: Path) -> tuple[str, list[str]]:
    """(project.yml with `${VAR}`s filled, the variables the deployer could not resolve)."""
    node = shutil.which("node")
    assert node is not None
    # A clean environment: the deployer reads process.env before .env.
    done = subprocess.run([node, str(RUNNER), str(INDEX), str(project_yml), str(env_file)],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={"PATH": os.environ.get("PATH", "")})
    out = json.loads(done.stdout)
    return str(out["content"]), [str(v) for v in out["badVars"]]
