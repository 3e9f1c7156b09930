"""The built artifact works: build.sh's output, alone, imports the handler and answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WORKER_TOKEN
from tests.fakes.openai_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[2]
PLATFORM_LIMIT_BYTES = 48 * 1024 * 1024

# Runs in a bare interpreter (-S -I: no site-packages at all), as the runtime does: activate
# the function's virtualenv, import its __main__.py, call main with a raw web event.
RUNTIME = r"""
import importlib.util, json, runpy, sys
fn_dir = sys.argv[1]
runpy.run_path(fn_dir + "/virtualenv/bin/activate_this.py")
sys.path.insert(0, fn_dir)
spec = importlib.util.spec_from_file_location("__fn_main__", fn_dir + "/__main__.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
class Ctx:
    def get_remaining_time_in_millis(self):
        return 20000
event = {"http": {"method": "POST", "path": "/v1/chat/completions", "isBase64Encoded": False,
                  "headers": {"content-type": "application/json"}, "queryString": "",
                  "body": json.dumps({"model": "small",
                                      "messages": [{"role": "user", "content": "built"}]})}}
result = module.main(event, Ctx())
import pydantic_core
heavy = [m for m in ("torch", "transformers", "huggingface_hub", "numpy") if m in sys.modules]
print(json.dumps({"result": result, "pydantic_core": pydantic_core.__file__, "heavy": heavy}))
"""


def _bare_python() -> str:
    # The interpreter the venv was made from: a plain CPython 3.11 like the runtime's.
    return os.path.realpath(str(getattr(sys, "_base_executable", sys.executable)))


@pytest.mark.slow
def test_build_sh_artifact_answers_in_a_bare_interpreter(tmp_path: Path, worker: FakeBackend):
    """GIVEN a temporary copy of the project WHEN build.sh runs THEN the function folder alone
    (its virtualenv + router copy) imports the handler in a bare interpreter and answers."""
    project = tmp_path / "project"
    (project / "packages" / "chat").mkdir(parents=True)
    shutil.copytree(ROOT / "packages" / "chat" / "ask", project / "packages" / "chat" / "ask",
                    ignore=shutil.ignore_patterns("virtualenv", "router", "__pycache__"))
    shutil.copytree(ROOT / "router", project / "router",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "requirements", project / "requirements")
    fn_dir = project / "packages" / "chat" / "ask"

    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PYTHON": sys.executable,
           "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    build = subprocess.run(["bash", str(fn_dir / "build.sh")], env=env, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]

    site = fn_dir / "virtualenv" / "lib" / "python3.11" / "site-packages"
    assert (fn_dir / "virtualenv" / "bin" / "activate_this.py").is_file()
    assert any(p.name.startswith("pydantic_core") for p in site.iterdir())
    assert any(p.name.endswith("x86_64-linux-gnu.so") for p in (site / "pydantic_core").iterdir())
    size = sum(p.stat().st_size for p in fn_dir.rglob("*") if p.is_file())
    assert size < PLATFORM_LIMIT_BYTES

    # Only the artifact: no repo on the path, no site-packages, a foreign working directory.
    run_env = {"PATH": "/usr/bin:/bin", "WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN}
    ran = subprocess.run([_bare_python(), "-S", "-I", "-c", RUNTIME, str(fn_dir)],
                         env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr[-2000:]
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out["result"]["statusCode"] == 200
    assert json.loads(out["result"]["body"])["choices"][0]["message"]["content"] == \
        "worker: built"
    assert out["pydantic_core"].startswith(str(site))
    assert out["heavy"] == []
