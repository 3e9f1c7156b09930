"""The built artifact works: build.sh's output, alone, imports the handler and answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import WORKER_TOKEN
from tests.fakes.openai_backend import FakeBackend
from tests.support.artifact import ROOT, build_ask, run_in_artifact

PLATFORM_LIMIT_BYTES = 48 * 1024 * 1024

ANSWER = r"""
import importlib.util, json
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
heavy = [m for m in ("torch", "transformers", "huggingface_hub", "numpy", "prometheus_client",
                     "router._tracing") if m in sys.modules]
print(json.dumps({"result": result, "pydantic_core": pydantic_core.__file__, "heavy": heavy}))
"""


@pytest.mark.slow
def test_build_sh_artifact_answers_in_a_bare_interpreter(tmp_path: Path, worker: FakeBackend):
    """GIVEN a temporary copy of the project WHEN build.sh runs THEN the function folder alone
    (its virtualenv + router copy) imports the handler in a bare interpreter and answers; the
    artifact holds the runtime package whole and no tool, even one just added."""
    fn_dir = build_ask(tmp_path / "project", extra_tool="brand_new_tool")

    shipped = sorted(p.name for p in (fn_dir / "router").iterdir())
    runtime = sorted(p.name for p in (ROOT / "router").glob("*.py") if p.name != "__main__.py")
    assert shipped == runtime
    assert "_fallback.py" in shipped and "__init__.py" in shipped
    assert not list(fn_dir.rglob("router_tools")) and not list(fn_dir.rglob("brand_new_tool*"))

    site = fn_dir / "virtualenv" / "lib" / "python3.11" / "site-packages"
    assert (fn_dir / "virtualenv" / "bin" / "activate_this.py").is_file()
    assert any(p.name.endswith("x86_64-linux-gnu.so") for p in (site / "pydantic_core").iterdir())
    size = sum(p.stat().st_size for p in fn_dir.rglob("*") if p.is_file())
    assert size < PLATFORM_LIMIT_BYTES

    # Only the artifact: no repo on the path, no site-packages, a foreign working directory.
    ran = run_in_artifact(fn_dir, ANSWER, {"WORKER_URL": worker.url,
                                           "WORKER_TOKEN": WORKER_TOKEN}, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out["result"]["statusCode"] == 200
    assert json.loads(out["result"]["body"])["choices"][0]["message"]["content"] == \
        "worker: built"
    assert out["pydantic_core"].startswith(str(site))
    assert out["heavy"] == []
