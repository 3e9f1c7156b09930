"""Cold start: each case in a fresh interpreter, cases taking turns run by run.

Our cases run in a bare interpreter (-S -I) that sees only the function `build.sh` made, as
DigitalOcean's runtime does, timed from after the virtualenv's activation. LiteLLM runs in its
own venv (-I). Each case reports its own peak RSS (ru_maxrss).

    .venv/bin/python -m bench.cold --importtime    # -X importtime of the entry, top self times
    .venv/bin/python -m bench.cold --tracing [--baseline REF]   # tracing off / on / before it
    .venv/bin/python -m bench.cold --deployments [--baseline REF]  # three LLM deployments

`--tracing` times the entry three ways, taking turns: as built (tracing off), with
OTEL_EXPORTER_OTLP_ENDPOINT set to an OTLP receiver on loopback (the /health span is exported
before `main` returns), and with the runtime of REF (default: where this branch left main)
in its place, the cold start before issue 20.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.alternatives import ensure_litellm, litellm_cold_run
from bench.common import median
from tests.fakes.otlp import OtlpReceiver
from tests.support.artifact import ACTIVATE, ROOT, bare_python, build_ask, run_in_artifact
from tests.support.loopback import LoopbackServer

ENTRY = """
import time; t0 = time.perf_counter()
import importlib.util, json
def hwm_kib():  # peak RSS of this process alone (ru_maxrss would include the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
spec = importlib.util.spec_from_file_location("ask", fn_dir + "/__main__.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
r = m.main({"http": {"method": "GET", "path": "/health", "headers": {}, "body": ""}}, None)
assert r["statusCode"] == 200
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                  "rss_kib": hwm_kib()}))
"""
FLOOR = """
import time; t0 = time.perf_counter()
import json
def hwm_kib():  # peak RSS of this process alone (ru_maxrss would include the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
import httpx, pydantic, tenacity
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                  "rss_kib": hwm_kib()}))
"""
# The same imports made to work: httpx and pydantic both import lazily, so a bare import leaves
# out httpcore and pydantic's model machinery, which any function using them pays on first use.
WORKING_FLOOR = """
import time; t0 = time.perf_counter()
import json
def hwm_kib():  # peak RSS of this process alone (ru_maxrss would include the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
import httpx, pydantic, tenacity
httpx.Client().close()
class Probe(pydantic.BaseModel):
    value: int = 0
Probe(value=1)
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                  "rss_kib": hwm_kib()}))
"""
# A production-like configuration: worker, Space and Hub credentials all set.
ENV = {"WORKER_URL": "https://worker.invalid/ai", "WORKER_TOKEN": "t" * 32,
       "SPACE_URL": "https://owner-chat.hf.space", "SPACE_TOKEN": "s" * 32,
       "SPACE_ID": "owner/chat", "HF_TOKEN": "hf_" + "x" * 34,
       "CORS_ORIGINS": "https://app.example.com"}

# Issue 26: the LLM tier as two Spaces and an Inference Endpoint (the README's worked setup).
THREE_DEPLOYMENTS = {
    "WORKER_URL": "https://worker.invalid/ai", "WORKER_TOKEN": "t" * 32,
    "HF_TOKEN": "hf_" + "x" * 34, "SPACE_A_TOKEN": "a" * 32, "SPACE_B_TOKEN": "b" * 32,
    "CORS_ORIGINS": "https://app.example.com",
    "LLM_DEPLOYMENTS": (
        "space-a kind=space url=https://owner-chat-a.hf.space token=SPACE_A_TOKEN "
        "id=owner/chat-a context=8192; space-b kind=space url=https://owner-chat-b.hf.space "
        "token=SPACE_B_TOKEN id=owner/chat-b context=8192; ep kind=endpoint "
        "url=https://abc.us-east-1.aws.endpoints.huggingface.cloud token=HF_TOKEN "
        "id=owner/chat-ep weight=2 context=32768 instance=nvidia-a10g-x1")}

FLOOR_CASE = "httpx+pydantic+tenacity import (floor)"
WORKING_CASE = "same, made to work (+ one httpx.Client, one BaseModel)"
ENTRY_CASE = "`ask` entry import + one /health"
LITELLM_CASE = "`import litellm` + `litellm.Router` (2 deployments)"

Figures = dict[str, dict[str, float]]


def artifact_case(fn_dir: Path, script: str, env: dict[str, str] | None = None
                  ) -> Callable[[], dict[str, float]]:
    """One cold case: `script` in a bare interpreter that sees only the built function."""
    def run() -> dict[str, float]:
        out = run_in_artifact(fn_dir, script, ENV if env is None else env, cwd=fn_dir.parent)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        data: dict[str, float] = json.loads(out.stdout)
        return data
    return run


def cold(runs: int, *, alternatives: bool = True) -> tuple[Figures, dict[str, str]]:
    """Median ms and peak RSS (MiB) per case over `runs` fresh interpreters each."""
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fn_dir = build_ask(Path(tmp) / "project")
        cases = {FLOOR_CASE: artifact_case(fn_dir, FLOOR),
                 WORKING_CASE: artifact_case(fn_dir, WORKING_FLOOR),
                 ENTRY_CASE: artifact_case(fn_dir, ENTRY)}
        if alternatives:
            python = ensure_litellm()
            if python is None:
                skipped[LITELLM_CASE] = "litellm could not be installed"
            else:
                home = Path(tmp)
                litellm_cold_run(python, home)  # writes its .pyc files; not counted
                cases[LITELLM_CASE] = lambda: litellm_cold_run(python, home)
        for case in cases.values():
            case()  # one untimed run each, so every case starts from warm disk caches
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(runs):
            for name, case in cases.items():
                samples[name].append(case())
    return ({name: {"median_ms": median([s["ms"] for s in runs_]),
                    "peak_rss_mib": max(s["rss_kib"] for s in runs_) / 1024}
             for name, runs_ in samples.items()}, skipped)


TRACED_CASE = "`ask` entry + one /health, tracing on (span exported)"
BEFORE_CASE = "`ask` entry + one /health, the runtime before issue 20"
AGAIN_CASE = "`ask` entry import + one /health, again (A/A control)"


def runtime_at(fn_dir: Path, ref: str, dest: Path) -> Path:
    """A copy of the built function whose `router/` is the runtime as it was at `ref`."""
    shutil.copytree(fn_dir, dest, symlinks=True)
    shutil.rmtree(dest / "router")
    archive = subprocess.run(["git", "archive", ref, "router"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "router" / "__main__.py").unlink(missing_ok=True)  # build.sh leaves it out
    return dest


def tracing(runs: int, baseline: str) -> Figures:
    """Median ms and peak RSS of the entry with tracing off, on, and before issue 20."""
    receiver = OtlpReceiver()
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer(receiver) as otlp:
        fn_dir = build_ask(Path(tmp) / "project")
        before = runtime_at(fn_dir, baseline, Path(tmp) / "before" / "packages" / "chat" / "ask")
        cases = {ENTRY_CASE: artifact_case(fn_dir, ENTRY),
                 TRACED_CASE: artifact_case(fn_dir, ENTRY, {
                     **ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}),
                 BEFORE_CASE: artifact_case(before, ENTRY),
                 # The first case again, last in each round: the spread an A/A pair shows.
                 AGAIN_CASE: artifact_case(fn_dir, ENTRY)}
        figures = _taking_turns(cases, runs)
        if len(receiver.spans) != runs + 1:
            raise RuntimeError(f"{len(receiver.spans)} spans arrived for {runs + 1} requests")
    return figures


THREE_CASE = "`ask` entry + one /health, three LLM deployments"
MAIN_CASE = "`ask` entry + one /health, the runtime before issue 26 (worker + Space)"
MAIN_AGAIN_CASE = "the runtime before issue 26 again (A/A control)"


def deployments(runs: int, baseline: str) -> Figures:
    """Median ms and peak RSS of the entry before issue 26 (worker and Space), as built now
    with the same two, and as built now with three LLM deployments, taking turns."""
    with tempfile.TemporaryDirectory() as tmp:
        fn_dir = build_ask(Path(tmp) / "project")
        before = runtime_at(fn_dir, baseline, Path(tmp) / "before" / "packages" / "chat" / "ask")
        cases = {MAIN_CASE: artifact_case(before, ENTRY),
                 ENTRY_CASE: artifact_case(fn_dir, ENTRY),
                 THREE_CASE: artifact_case(fn_dir, ENTRY, THREE_DEPLOYMENTS),
                 MAIN_AGAIN_CASE: artifact_case(before, ENTRY)}
        return _taking_turns(cases, runs)


def _taking_turns(cases: dict[str, Callable[[], dict[str, float]]], runs: int) -> Figures:
    for case in cases.values():
        case()  # one untimed run each: warm disk caches and .pyc files
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    names = list(cases)
    for number in range(runs):
        # Which case goes first turns round by round: no case always follows the same one.
        for name in names[number % len(names):] + names[:number % len(names)]:
            samples[name].append(cases[name]())
    return {name: {"median_ms": median([s["ms"] for s in runs_]),
                   "peak_rss_mib": max(s["rss_kib"] for s in runs_) / 1024}
            for name, runs_ in samples.items()}


def importtime(top: int = 25) -> str:
    """`-X importtime` of the entry + /health in the built function: the top self times."""
    with tempfile.TemporaryDirectory() as tmp:
        fn_dir = build_ask(Path(tmp) / "project")
        out = subprocess.run([bare_python(), "-X", "importtime", "-S", "-I", "-c",
                              ACTIVATE + ENTRY, str(fn_dir)], env={"PATH": "/usr/bin:/bin", **ENV},
                             cwd=fn_dir.parent, capture_output=True, text=True, timeout=60,
                             check=True)
    rows = []
    for line in out.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if found:
            rows.append((int(found[1]), int(found[2]), found[4]))
    rows.sort(reverse=True)
    lines = [f"{'self us':>8} {'cumul us':>9}  module", *(
        f"{s:8d} {c:9d}  {name}" for s, c, name in rows[:top])]
    total = sum(s for s, _, _ in rows)
    lines.append(f"total self time of {len(rows)} imports: {total / 1000:.1f} ms")
    return "\n".join(lines)


def main() -> None:
    """Print the -X importtime profile of the built entry."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tracing", action="store_true")
    parser.add_argument("--deployments", action="store_true")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", default="")
    args = parser.parse_args()
    baseline = args.baseline or subprocess.run(
        ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True,
        check=True).stdout.strip()
    if args.deployments:
        figures = deployments(args.runs, baseline)
        print(json.dumps({"baseline": baseline[:12], "runs": args.runs, "figures": figures,
                          "three_over_before": round(figures[THREE_CASE]["median_ms"]
                                                     / figures[MAIN_CASE]["median_ms"], 3)},
                         indent=1))
    elif args.tracing:
        figures = tracing(args.runs, baseline)
        print(json.dumps({"baseline": baseline[:12], "runs": args.runs, "figures": figures},
                         indent=1))
    elif args.importtime:
        print(importtime(args.top))
    else:
        figures, skipped = cold(5)
        print(json.dumps({"figures": figures, "skipped": skipped}, indent=1))


if __name__ == "__main__":
    main()
