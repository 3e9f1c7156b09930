"""Warm overhead: one chat request sent every way, alternating, against one instant backend.

Every path ends at the same loopback FakeBackend, which answers at once, so what a path adds
over `direct httpx` is its own overhead. The paths take turns request by request, so a burst of
load from elsewhere on the machine hits them all alike.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

from bench.alternatives import (
    LiteLLMWorker,
    PortkeyGateway,
    ensure_litellm,
    ensure_portkey,
)
from bench.common import pct
from router import FunctionContext
from router_service import Service
from router_tools.gateway import load_entry
from tests.fakes.openai_backend import FakeBackend
from tests.support.loopback import LoopbackServer

log = logging.getLogger("bench.warm")
TOKEN = "bench-token"
BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
WARMUP = 50
DIRECT = "direct httpx (baseline)"
IN_PROCESS = "handler in-process"
GATEWAY = "service (router_service on uvicorn)"
PORTKEY = "Portkey gateway (Node, @portkey-ai/gateway)"
LITELLM = "LiteLLM Router.completion (2 deployments)"

Figures = dict[str, dict[str, float]]


def _timed(call: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1000
    return run


def warm(requests: int, *, alternatives: bool = True) -> tuple[Figures, dict[str, str]]:
    """p50/p99 (ms) per path, and the reason for each alternative left unmeasured."""
    skipped: dict[str, str] = {}
    backend = FakeBackend("worker", token=TOKEN)
    with ExitStack() as stack:
        server = stack.enter_context(LoopbackServer(backend))
        # The entry reads its settings from the environment, as on DigitalOcean; put it back
        # afterwards, or later benches' subprocesses would inherit this (dead) worker.
        saved = dict(os.environ)
        stack.callback(os.environ.update, saved)
        stack.callback(os.environ.clear)
        os.environ.update({"WORKER_URL": server.url, "WORKER_TOKEN": TOKEN,
                           "LOG_LEVEL": "WARNING"})
        main = load_entry()
        stack.callback(main.__globals__["FUNCTION"].close)
        # A container of its own for the service: a router's async clients belong to the one
        # event loop that uses them (the function's loop thread, or the service's loop).
        served = load_entry()
        stack.callback(served.__globals__["FUNCTION"].close)
        gateway = Service(served.__globals__["FUNCTION"].router(), namespace="bench",
                          port=0).start()
        stack.callback(gateway.stop)
        event: dict[str, Any] = {"http": {"method": "POST", "path": "/v1/chat/completions",
                                          "headers": {"content-type": "application/json"},
                                          "body": json.dumps(BODY), "isBase64Encoded": False}}
        direct = stack.enter_context(httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {TOKEN}"}))
        via = stack.enter_context(httpx.Client(base_url=gateway.function_url))

        def handler() -> None:
            assert main(event, FunctionContext.with_timeout(28_000))["statusCode"] == 200

        paths: dict[str, Callable[[], float]] = {
            DIRECT: _timed(lambda: direct.post("/v1/chat/completions",
                                               json=BODY).raise_for_status()),
            IN_PROCESS: _timed(handler),
            GATEWAY: _timed(lambda: via.post("/v1/chat/completions",
                                             json=BODY).raise_for_status()),
        }
        if alternatives:
            _add_portkey(stack, paths, skipped, server.url)
            _add_litellm(stack, paths, skipped, server.url)
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for i in range(requests + WARMUP):
            for name, run in paths.items():
                elapsed = run()
                if i >= WARMUP:  # warm-up rounds are not counted
                    samples[name].append(elapsed)
    return ({name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for name, v in samples.items()},
            skipped)


def _add_portkey(stack: ExitStack, paths: dict[str, Callable[[], float]],
                 skipped: dict[str, str], backend_url: str) -> None:
    script = ensure_portkey()
    if script is None:
        skipped[PORTKEY] = "Node/npm or the npm package could not be had"
        return
    try:
        portkey = PortkeyGateway(script)
    except RuntimeError as exc:
        skipped[PORTKEY] = str(exc)
        return
    stack.callback(portkey.close)
    client = stack.enter_context(httpx.Client(
        base_url=portkey.url, headers=PortkeyGateway.headers(backend_url, TOKEN)))
    first = client.post("/v1/chat/completions", json=BODY)
    if first.status_code != 200 or "choices" not in first.json():
        skipped[PORTKEY] = f"answered HTTP {first.status_code}: {first.text[:200]}"
        return
    paths[PORTKEY] = _timed(lambda: client.post("/v1/chat/completions",
                                                json=BODY).raise_for_status())


def _add_litellm(stack: ExitStack, paths: dict[str, Callable[[], float]],
                 skipped: dict[str, str], backend_url: str) -> None:
    python = ensure_litellm()
    if python is None:
        skipped[LITELLM] = "litellm could not be installed"
        return
    try:
        worker = stack.enter_context(LiteLLMWorker(python, backend_url + "/v1", TOKEN))
    except RuntimeError as exc:
        skipped[LITELLM] = str(exc)
        return
    paths[LITELLM] = worker.request
