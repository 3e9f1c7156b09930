"""Benchmarks of the `ask` function: cold import against its dependency floor, and warm overhead
against a direct httpx call, all on this machine in one run.

    .venv/bin/python -m bench.router_bench [--runs 10] [--requests 2000] [--out bench/router.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from router.do_event import FunctionContext
from router.gateway import Gateway, load_entry
from tests.fakes.openai_backend import FakeBackend
from tests.support.artifact import build_ask, run_in_artifact
from tests.support.loopback import LoopbackServer

ROOT = Path(__file__).resolve().parent.parent

# Each cold case runs in a fresh bare interpreter that sees only the function build.sh made
# (as the runtime does), timing from after the virtualenv's activation, and reports its own
# peak RSS (ru_maxrss, KiB on Linux).
COLD_ENTRY = """
import time; t0 = time.perf_counter()
import importlib.util, json, resource
spec = importlib.util.spec_from_file_location("ask", fn_dir + "/__main__.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
r = m.main({"http": {"method": "GET", "path": "/health", "headers": {}, "body": ""}}, None)
assert r["statusCode"] == 200
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
COLD_FLOOR = """
import time; t0 = time.perf_counter()
import json, resource
import httpx, pydantic, tenacity
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
# The same imports made to work: httpx and pydantic both import lazily, so a bare import leaves
# out httpcore and pydantic's model machinery, which any function using them pays on first use.
COLD_WORKING_FLOOR = """
import time; t0 = time.perf_counter()
import json, resource
import httpx, pydantic, tenacity
httpx.Client().close()
class Probe(pydantic.BaseModel):
    value: int = 0
Probe(value=1)
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
# A production-like configuration: worker, Space and Hub credentials all set.
COLD_ENV = {"WORKER_URL": "https://worker.invalid/ai", "WORKER_TOKEN": "t" * 32,
            "SPACE_URL": "https://owner-chat.hf.space", "SPACE_TOKEN": "s" * 32,
            "SPACE_ID": "owner/chat", "HF_TOKEN": "hf_" + "x" * 34,
            "CORS_ORIGINS": "https://app.example.com"}


def cold(fn_dir: Path, script: str, runs: int) -> dict[str, float]:
    """Median import-and-answer time and peak RSS over `runs` fresh interpreters."""
    times, rss = [], []
    for _ in range(runs):
        out = run_in_artifact(fn_dir, script, COLD_ENV, cwd=fn_dir.parent)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        data = json.loads(out.stdout)
        times.append(data["ms"])
        rss.append(data["rss_kib"] / 1024)
    return {"median_ms": statistics.median(times), "peak_rss_mib": max(rss)}


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def warm(requests: int) -> dict[str, dict[str, float]]:
    """p50/p99 of one chat request sent directly, through the handler, and through the gateway,
    alternating, against the same instant loopback backend."""
    backend = FakeBackend("worker", token="bench-token")
    server = LoopbackServer(backend).start()
    os.environ.update({"WORKER_URL": server.url, "WORKER_TOKEN": "bench-token",
                       "LOG_LEVEL": "WARNING"})
    main = load_entry()
    gateway = Gateway(main, namespace="bench", port=0).start()
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    event: dict[str, Any] = {"http": {"method": "POST", "path": "/v1/chat/completions",
                                      "headers": {"content-type": "application/json"},
                                      "body": json.dumps(body), "isBase64Encoded": False}}
    samples: dict[str, list[float]] = {"direct httpx": [], "handler in-process": [],
                                       "local gateway": []}
    direct = httpx.Client(base_url=server.url, headers={"authorization": "Bearer bench-token"})
    via = httpx.Client(base_url=gateway.function_url)
    try:
        for i in range(requests + 50):
            for name in samples:
                started = time.perf_counter()
                if name == "direct httpx":
                    direct.post("/v1/chat/completions", json=body).raise_for_status()
                elif name == "handler in-process":
                    assert main(event, FunctionContext.with_timeout(28_000))["statusCode"] == 200
                else:
                    via.post("/v1/chat/completions", json=body).raise_for_status()
                if i >= 50:  # warm-up rounds are not counted
                    samples[name].append((time.perf_counter() - started) * 1000)
    finally:
        direct.close()
        via.close()
        gateway.stop()
        main.__globals__["FUNCTION"].close()
        server.stop()
    return {name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for name, v in samples.items()}


def decision_us(rounds: int = 20_000) -> dict[str, float]:
    """Time of one `auto` routing decision, in microseconds."""
    from router.config import Settings
    from router.policy import Policy
    from router.schema import ChatMessage

    policy = Policy(Settings.from_env({"WORKER_URL": "http://x.invalid"}))
    messages = [ChatMessage(role="system", content="You help freelancers."),
                ChatMessage(role="user", content="Can you summarise this job post for me? " * 5)]
    times = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        policy.decide("auto", messages, None)
        times.append((time.perf_counter_ns() - started) / 1000)
    return {"p50_us": pct(times, 50), "p99_us": pct(times, 99)}


def render(cold_entry: dict[str, float], cold_floor: dict[str, float],
           cold_working: dict[str, float], warm_: dict[str, dict[str, float]],
           decide: dict[str, float], runs: int, requests: int) -> str:
    """The markdown table."""
    direct = warm_["direct httpx"]
    lines = [
        f"### Router benchmarks ({runs} cold runs, {requests} warm requests per path; "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]})",
        "",
        "| cold start (fresh interpreter, built function only) | median ms | peak RSS MiB "
        "| vs floor |",
        "|---|---|---|---|",
        f"| httpx+pydantic+tenacity import (floor) | {cold_floor['median_ms']:.1f} | "
        f"{cold_floor['peak_rss_mib']:.1f} | 1.00x |",
        f"| same, made to work (+ one httpx.Client, one BaseModel) | "
        f"{cold_working['median_ms']:.1f} | {cold_working['peak_rss_mib']:.1f} | "
        f"{cold_working['median_ms'] / cold_floor['median_ms']:.2f}x |",
        f"| `ask` entry import + one /health (worker, Space, Hub configured) | "
        f"{cold_entry['median_ms']:.1f} | {cold_entry['peak_rss_mib']:.1f} | "
        f"{cold_entry['median_ms'] / cold_floor['median_ms']:.2f}x "
        f"({cold_entry['median_ms'] / cold_working['median_ms']:.2f}x the working floor) |",
        "",
        "| warm chat request | p50 ms | p99 ms | overhead p50 | overhead p99 |",
        "|---|---|---|---|---|",
    ]
    for name, figures in warm_.items():
        lines.append(f"| {name} | {figures['p50_ms']:.3f} | {figures['p99_ms']:.3f} | "
                     f"{figures['p50_ms'] - direct['p50_ms']:+.3f} | "
                     f"{figures['p99_ms'] - direct['p99_ms']:+.3f} |")
    lines += ["", f"`auto` decision: p50 {decide['p50_us']:.1f} µs, "
                  f"p99 {decide['p99_us']:.1f} µs", ""]
    return "\n".join(lines)


def main() -> None:
    """Run every benchmark and print (and save) the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "router.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fn_dir = build_ask(Path(tmp) / "project")
        floor = cold(fn_dir, COLD_FLOOR, args.runs)
        working = cold(fn_dir, COLD_WORKING_FLOOR, args.runs)
        entry = cold(fn_dir, COLD_ENTRY, args.runs)
    table = render(entry, floor, working, warm(args.requests), decision_us(), args.runs,
                   args.requests)
    Path(args.out).write_text(table)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
