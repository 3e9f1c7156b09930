"""What a collector costs the function's answers: tracing off, a healthy collector, one that
hangs (takes requests, never answers) and one that answers 500, taking turns request by request.

Each case is the `ask` entry in a container of its own, answering the same chat from one
loopback FakeBackend that answers at once; the collectors are tests/fakes/otlp.py's receiver on
loopback. The figure that matters is a case's p50 and p99 beside tracing off, in the same run.

    .venv/bin/python -m bench.tracing [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import ExitStack
from typing import Any

from bench.common import pct
from router import FunctionContext
from router_tools.gateway import load_entry
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.otlp import OtlpReceiver
from tests.support.loopback import LoopbackServer

TOKEN = "bench-token"
BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
WARMUP = 20
EVENT: dict[str, Any] = {"http": {"method": "POST", "path": "/v1/chat/completions",
                                  "headers": {"content-type": "application/json"},
                                  "body": json.dumps(BODY), "isBase64Encoded": False}}


def collector_cost(requests: int) -> dict[str, Any]:
    """p50 / p99 (ms) of one function answer per case, and the spans each case dropped."""
    backend = FakeBackend("worker", token=TOKEN)
    collectors = {"healthy collector": OtlpReceiver(), "hung collector": OtlpReceiver(),
                  "collector answers 500": OtlpReceiver(status=500)}
    collectors["hung collector"].hanging.set()
    with ExitStack() as stack:
        worker = stack.enter_context(LoopbackServer(backend))
        urls = {name: stack.enter_context(LoopbackServer(app)).url
                for name, app in collectors.items()}
        stack.callback(collectors["hung collector"].hanging.clear)
        saved = dict(os.environ)
        stack.callback(os.environ.update, saved)
        stack.callback(os.environ.clear)
        mains = {}
        for name, url in {"tracing off": "", **urls}.items():
            os.environ.update({"WORKER_URL": worker.url, "WORKER_TOKEN": TOKEN,
                               "LOG_LEVEL": "ERROR", "OTEL_EXPORTER_OTLP_ENDPOINT": url})
            mains[name] = load_entry()
            mains[name].__globals__["FUNCTION"].router()  # built now, from this environment
            stack.callback(mains[name].__globals__["FUNCTION"].close)
        samples: dict[str, list[float]] = {name: [] for name in mains}
        for index in range(requests + WARMUP):
            for name, main in mains.items():
                started = time.perf_counter()
                answer = main(EVENT, FunctionContext.with_timeout(28_000))
                elapsed = (time.perf_counter() - started) * 1000
                assert answer["statusCode"] == 200, answer
                if index >= WARMUP:
                    samples[name].append(elapsed)
        # The tracer is the observer member with an exporter (its type is the runtime's own).
        dropped = {name: sum(member.exporter.dropped_spans for member in
                             main.__globals__["FUNCTION"].router().observer.members
                             if hasattr(member, "exporter"))
                   for name, main in mains.items() if name != "tracing off"}
    out: dict[str, Any] = {name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                           for name, v in samples.items()}
    out["dropped_spans"] = dropped
    out["requests"] = requests
    return out


def rows(fig: dict[str, Any]) -> list[str]:
    """The bench table's rows."""
    off = fig["tracing off"]
    out = []
    for name in ("healthy collector", "hung collector", "collector answers 500"):
        case = fig[name]
        added = case["p50_ms"] - off["p50_ms"]
        out.append(f"| function answer, {name} ({fig['requests']} requests) | p50 / p99 | "
                   f"{case['p50_ms']:.2f} / {case['p99_ms']:.2f} ms | tracing off "
                   f"{off['p50_ms']:.2f} / {off['p99_ms']:.2f} ms; added p50 {added:+.2f} ms; "
                   f"spans dropped {fig['dropped_spans'][name]} | < 10 ms added: "
                   f"{'**met**' if added < 10 else '**missed**'} |")
    return out


def main() -> None:
    """Run the bench and print its figures and rows."""
    logging.getLogger("router").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    fig = collector_cost(args.requests)
    sys.stdout.write(json.dumps(fig, indent=1) + "\n" + "\n".join(rows(fig)) + "\n")


if __name__ == "__main__":
    main()
