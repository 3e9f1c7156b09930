"""Issue 11, defect 10: the entries import OUR `router`, whatever the runtime image holds.

DigitalOcean's 3.11 image starts a function through OpenWhisk's prelauncher: it unpacks the
zip, renames `__main__.py` to `main__.py`, runs `virtualenv/bin/activate_this.py`, APPENDS the
function's folder to `sys.path` (after the image's own site-packages) and does
`from main__ import main`. A top-level `router` in the image's site-packages would then win.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import WORKER_TOKEN
from tests.fakes.openai_backend import FakeBackend
from tests.support.artifact import ROOT, bare_python, build_ask

# The prelauncher's order, with a decoy `router` where the image's site-packages sit: first the
# image's path (the decoy), then activate_this (our virtualenv), then the folder APPENDED.
PRELAUNCH = r"""
import json, os, runpy, sys
fn_dir, image_site = sys.argv[1], sys.argv[2]
sys.path.insert(0, image_site)
os.chdir(fn_dir)
runpy.run_path(fn_dir + "/virtualenv/bin/activate_this.py")
sys.path.append(fn_dir)
from main__ import main
import router
class Ctx:
    def get_remaining_time_in_millis(self):
        return 20000
event = {"http": {"method": "GET", "path": "/health", "isBase64Encoded": False,
                  "headers": {}, "queryString": "", "body": ""}}
result = main(event, Ctx()) if sys.argv[3] == "ask" else main({"source": "test"}, Ctx())
print(json.dumps({"router": router.__file__, "result": result}))
"""


def _decoy(site: Path) -> Path:
    (site / "router").mkdir(parents=True)
    (site / "router" / "__init__.py").write_text(
        "raise ImportError('the image decoy `router` was imported')\n")
    return site


@pytest.mark.slow
def test_entries_import_our_router_over_an_image_router(tmp_path: Path, worker: FakeBackend):
    """GIVEN the built artifact and a decoy top-level `router` in the image's site-packages
    WHEN the prelauncher's steps load `ask` and `warmup` (folder appended to sys.path)
    THEN each entry imports the artifact's own `router` and answers."""
    import subprocess

    fn_dir = build_ask(tmp_path / "project")
    image_site = _decoy(tmp_path / "image-site-packages")
    warm_dir = tmp_path / "warmup"
    shutil.copytree(fn_dir, warm_dir, symlinks=True)
    shutil.copy(ROOT / "packages" / "chat" / "warmup" / "__main__.py", warm_dir / "main__.py")
    shutil.copy(fn_dir / "__main__.py", fn_dir / "main__.py")
    env = {"PATH": "/usr/bin:/bin", "WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN}

    for name, folder in (("ask", fn_dir), ("warmup", warm_dir)):
        ran = subprocess.run([bare_python(), "-S", "-I", "-c", PRELAUNCH, str(folder),
                              str(image_site), name], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
        assert ran.returncode == 0, (name, ran.stderr[-2000:])
        out = json.loads(ran.stdout.strip().splitlines()[-1])
        assert out["router"] == str(folder / "router" / "__init__.py"), name
        if name == "ask":
            assert out["result"]["statusCode"] == 200
        else:
            assert out["result"]["health"]["worker"]["status"] == "ok"
