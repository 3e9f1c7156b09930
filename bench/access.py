"""Access and quotas: the cold start of `ask` with CLIENT_TOKEN_SECRET and REDIS_URL set, and
the warm cost of a token check plus a Redis round trip.

Cold cases run in the built function in a bare interpreter, like bench/cold.py, beside the
working floor measured in the same run. Warm paths are the real handler (WebFunction) in three
configurations, alternating request by request against one instant loopback backend; the
overhead is each path's difference to the open handler. A real `redis-server` on loopback
stands in for the managed Valkey (whose round trip adds the network's RTT on top).

    .venv/bin/python -m bench.access [--runs 10] [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from bench import cold as cold_
from bench.common import median, pct
from router import FunctionContext, WebFunction
from router_tools.token_cli import mint
from tests.fakes.openai_backend import FakeBackend
from tests.support.artifact import build_ask
from tests.support.loopback import LoopbackServer
from tests.support.redis_server import RedisServer

SECRET = "bench-client-token-secret-0123456789abcdef"
WARMUP = 50
BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

# The entry's first real request: a token check (PyJWT imported) and one quota hit (redis-py
# imported, a connection opened, one round trip).
FIRST_REQUEST = cold_.ENTRY.replace(
    'assert r["statusCode"] == 200\n',
    'assert r["statusCode"] == 200\n'
    'import os\n'
    'r = m.main({"http": {"method": "GET", "path": "/v1/models", "body": "", "headers": '
    '{"authorization": "Bearer " + os.environ["BENCH_TOKEN"]}}}, None)\n'
    'assert r["statusCode"] == 200, r\n')
WORKING = "working floor (as in the cold start rows)"
ENTRY_OPEN = "`ask` + one /health, open (as in the cold start rows)"
ENTRY_AUTH = "`ask` + one /health, CLIENT_TOKEN_SECRET + REDIS_URL + quotas set"
FIRST = "same, + its first token-checked request (PyJWT, redis-py, one Redis round trip)"
OPEN = "handler, open, no quotas (baseline)"
TOKEN = "handler + token check"
TOKEN_REDIS = "handler + token check + Redis quota (one round trip)"
REDIS_ALONE = "Redis round trip alone (the quota counter's pipeline, redis-py)"

Figures = dict[str, dict[str, float]]


def cold(runs: int, redis_url: str) -> Figures:
    """Median ms and peak RSS per cold case, cases taking turns run by run."""
    auth_env = {**cold_.ENV, "CLIENT_TOKEN_SECRET": SECRET, "REDIS_URL": redis_url,
                "RATE_LIMIT_PER_MINUTE": "1000000", "LLM_RATE_LIMIT_PER_MINUTE": "1000000",
                "BENCH_TOKEN": mint(SECRET, "bench-user", 3_600)}
    with tempfile.TemporaryDirectory() as tmp:
        fn_dir = build_ask(Path(tmp) / "project")

        def case(script: str, env: dict[str, str]) -> Callable[[], dict[str, float]]:
            return cold_.artifact_case(fn_dir, script, env)

        cases = {WORKING: case(cold_.WORKING_FLOOR, cold_.ENV),
                 ENTRY_OPEN: case(cold_.ENTRY, cold_.ENV),
                 ENTRY_AUTH: case(cold_.ENTRY, auth_env),
                 FIRST: case(FIRST_REQUEST, auth_env)}
        for run in cases.values():
            run()  # untimed: warm disk caches and .pyc files
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(runs):
            for name, run in cases.items():
                samples[name].append(run())
    return {name: {"median_ms": median([s["ms"] for s in got]),
                   "peak_rss_mib": max(s["rss_kib"] for s in got) / 1024}
            for name, got in samples.items()}


def warm(requests: int, redis_url: str) -> Figures:
    """p50/p99 (ms) of the handler open, with a token check, and with a Redis quota too."""
    backend = FakeBackend("worker", token="bench-worker-token")
    token = mint(SECRET, "bench-user", 3_600)
    event: dict[str, Any] = {"http": {
        "method": "POST", "path": "/v1/chat/completions", "body": json.dumps(BODY),
        "headers": {"content-type": "application/json", "authorization": f"Bearer {token}",
                    "x-forwarded-for": "203.0.113.7"}}}
    with ExitStack() as stack:
        server = stack.enter_context(LoopbackServer(backend))
        base = {"WORKER_URL": server.url, "WORKER_TOKEN": "bench-worker-token",
                "LOG_LEVEL": "WARNING"}
        configs = {OPEN: base,
                   TOKEN: {**base, "CLIENT_TOKEN_SECRET": SECRET},
                   TOKEN_REDIS: {**base, "CLIENT_TOKEN_SECRET": SECRET, "REDIS_URL": redis_url,
                                 "RATE_LIMIT_PER_MINUTE": "100000000"}}
        paths: dict[str, Callable[[], object]] = {}
        for name, env in configs.items():
            function = WebFunction(env)
            stack.callback(function.close)
            paths[name] = _handler(function, event)
        # The quota counter's own round trip (router/_quota_redis.py), without its thread hop:
        # one pipeline of INCR, EXPIRE NX and PTTL.
        client = redis.Redis.from_url(redis_url, socket_timeout=0.040)
        stack.callback(client.close)

        def redis_alone() -> object:
            pipe = client.pipeline(transaction=True)
            pipe.incr("chat-router:bench")
            pipe.expire("chat-router:bench", 60, nx=True)
            pipe.pttl("chat-router:bench")
            return pipe.execute()

        paths[REDIS_ALONE] = redis_alone
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for i in range(requests + WARMUP):
            for name, call in paths.items():
                started = time.perf_counter()
                call()
                if i >= WARMUP:
                    samples[name].append((time.perf_counter() - started) * 1000)
    return {name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for name, v in samples.items()}


def _handler(function: WebFunction, event: dict[str, Any]) -> Callable[[], object]:
    def call() -> object:
        result = function(event, FunctionContext.with_timeout(28_000))
        assert result["statusCode"] == 200, result
        return result
    return call


def access(runs: int, requests: int) -> tuple[Figures, Figures] | str:
    """Cold and warm figures, or why they could not be measured."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            return cold(runs, server.url), warm(requests, server.url)
        finally:
            server.stop()


def rows(result: tuple[Figures, Figures] | str, runs: int, requests: int) -> list[str]:
    """The benchmark table's rows for access and quotas."""
    if isinstance(result, str):
        return [f"| access and quotas | | not measured | {result} | |"]
    cold_figs, warm_figs = result
    working = cold_figs[WORKING]["median_ms"]
    out = []
    head = f"cold start with access and quotas, median of {runs} fresh interpreters"
    for name, fig in cold_figs.items():
        ratio = fig["median_ms"] / working
        target = (f"≤ 1.3x working floor: {'**met**' if ratio <= 1.3 else '**missed**'}"
                  if name in (ENTRY_AUTH, FIRST) else "")
        out.append(f"| {head} | {name} | {fig['median_ms']:.1f} ms, peak RSS "
                   f"{fig['peak_rss_mib']:.1f} MiB | {ratio:.2f}x the working floor | {target} |")
        head = ""
    base = warm_figs[OPEN]
    head = f"warm token check + quota, p50 / p99 of {requests} per path, alternating"
    for name, fig in warm_figs.items():
        note = "baseline" if name == OPEN else (
            f"overhead {fig['p50_ms'] - base['p50_ms']:+.3f} / "
            f"{fig['p99_ms'] - base['p99_ms']:+.3f} ms")
        if name == REDIS_ALONE:
            note = "loopback redis-server; a managed Valkey adds its network RTT"
        out.append(f"| {head} | {name} | {fig['p50_ms']:.3f} / {fig['p99_ms']:.3f} ms | "
                   f"{note} | |")
        head = ""
    return out


def main() -> None:
    """Print the rows of this benchmark alone."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    print("\n".join(rows(access(args.runs, args.requests), args.runs, args.requests)))


if __name__ == "__main__":
    main()
