"""Nothing heavy on the `ask` path: the schedule rides along; huggingface_hub and cron do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROBE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("entry", "packages/chat/ask/__main__.py")
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
import router._app, router_tools.cli
heavy = [m for m in ("huggingface_hub", "torch", "transformers", "yaml") if m in sys.modules]
print(",".join(heavy) or "none", "router._schedule" in sys.modules)
"""
# The functions' own import path: the entries only (the CLI and cost are tools).
FUNCTIONS = """
import importlib.util, sys
for name in ("ask", "warmup"):
    spec = importlib.util.spec_from_file_location(name, f"packages/chat/{name}/__main__.py")
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
import router._app, router._warmup
cron = ("cronsim", "croniter", "router_tools.cron")
print(",".join(m for m in cron if m in sys.modules) or "none")
"""


def test_ask_and_cli_import_no_hub_client():
    """GIVEN a fresh interpreter WHEN the `ask` entry, the router and the CLI are imported
    THEN huggingface_hub, torch, transformers and yaml are not loaded (the schedule is)."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert out == ["none", "True"]


def test_the_functions_never_load_a_cron_parser():
    """GIVEN a fresh interpreter WHEN the `ask` and `warmup` entries and their router modules are
    imported THEN no cron library (nor router_tools.cron) is loaded: cron is for the tools only, and
    requirements/router.txt does not ship one."""
    out = subprocess.run([sys.executable, "-c", FUNCTIONS], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert out == ["none"]
    shipped = (ROOT / "requirements" / "router.txt").read_text().lower()
    assert "cronsim" not in shipped and "croniter" not in shipped
