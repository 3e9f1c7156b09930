"""Issue 20: the real `/metrics` of the service and of ai_space, scraped around a fallback, a
stream, a wake and a quota refusal; every counter moves by exactly what the answers said.

The worker is ai_space on a tiny model (our own fallback, so the real one), the Space a fake
behind HF's edge, the Hub a fake on loopback, the service the real `router_service` on uvicorn.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import HF_TOKEN, SPACE_ID, SPACE_TOKEN
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import WORKER_API_TOKEN, served
from tests.support.service import serve_main

pytestmark = pytest.mark.slow

PROMPT = "metrics-prompt-7d3f please say something"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
# Served by llama.cpp's engine only (the tiny worker here runs transformers).
LLAMA_ONLY = {"ai_space_kv_cache_usage_ratio"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client, url: str, token: str | None = None) -> tuple[str, Samples]:
    """GET /metrics; its text and every sample by (name, sorted labels)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How far one sample moved between two scrapes (0 where it did not exist)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def total(samples: Samples, name: str) -> float:
    """The sum of a sample over all its label values."""
    return sum(value for (sample, _), value in samples.items() if sample == name)


@pytest.fixture
def stack(make_main: Any, worker_server: str) -> Iterator[dict[str, Any]]:
    """The service over the real worker, a sleeping Space behind the edge, and the Hub."""
    space = FakeBackend("space", token=SPACE_TOKEN, mode="sleeping")
    hub = FakeHub(SPACE_ID, HF_TOKEN)
    with served(space) as space_url, served(hub) as hub_url:
        main = make_main({"WORKER_URL": worker_server, "WORKER_TOKEN": WORKER_API_TOKEN,
                          "SPACE_URL": space_url, "SPACE_TOKEN": SPACE_TOKEN,
                          "SPACE_ID": SPACE_ID, "HF_TOKEN": HF_TOKEN, "HF_ENDPOINT": hub_url,
                          "RATE_LIMIT_PER_MINUTE": "3", "ROUTER_DEADLINE_MS": "20000",
                          "WAKE_POLL_MS": "50"})
        service = serve_main(main, namespace="metrics", port=0)
        try:
            yield {"service": service, "space": space, "hub": hub, "main": main,
                   "urls": (worker_server, space_url, hub_url)}
        finally:
            service.stop()


def chat(client: httpx.Client, url: str, model: str) -> httpx.Response:
    """One buffered chat through the service."""
    return client.post(url + "/v1/chat/completions", json={
        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": PROMPT}]})


def stream(client: httpx.Client, url: str) -> tuple[dict[str, str], dict[str, Any]]:
    """One true stream (usage asked for); its headers, and its facts: `x_chat` from the chunk
    with the finish_reason, `usage` from the usage chunk that ends the stream."""
    body = {"model": "small", "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}
    facts: dict[str, Any] = {}
    with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                facts.update({k: chunk[k] for k in ("x_chat", "usage") if chunk.get(k)})
        return dict(response.headers), facts


def test_metrics_move_by_exactly_what_happened(stack: dict[str, Any], worker_server: str):
    """GIVEN the service (RATE_LIMIT_PER_MINUTE=3) over the real worker and a sleeping Space
    WHEN an `llm` chat falls back (and wakes the Space), a `small` chat streams from the worker,
    the Space comes back and answers an `llm` chat, and a fourth request is over the quota
    THEN the service's /metrics count each request under its route, backend, fallback and
    status, the attempts, tokens and first token the answers reported, one wake and its time
    back, one quota refusal; the worker's /metrics count its two generations and their tokens;
    the Grafana dashboard graphs only names the two serve; and no sample carries the prompt, a
    token or a backend URL."""
    service, space, hub = stack["service"], stack["space"], stack["hub"]
    base = service.function_url
    metrics_url = f"http://{service.host}:{service.port}/metrics"
    worker_metrics = worker_server + "/metrics"
    with httpx.Client(timeout=30) as client:
        _, router0 = scrape(client, metrics_url)
        _, worker0 = scrape(client, worker_metrics, WORKER_API_TOKEN)

        fell_back = chat(client, base, "llm")
        assert fell_back.status_code == 200
        assert fell_back.headers["x-chat-fallback"] == "space_sleeping"
        # The wake runs on its own thread: wait for its restart, then (the Space RUNNING
        # again) for its watch to see it and end.
        end = time.monotonic() + 10
        while hub.restarts == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert hub.restarts == 1
        streamed_headers, last = stream(client, base)
        space.mode = "ok"
        hub.advance()  # the Space is RUNNING again
        stack["main"].__globals__["FUNCTION"].router().engine.wakers["space"].settle(10)
        from_space = chat(client, base, "llm")
        refused = chat(client, base, "small")

        text, router1 = scrape(client, metrics_url)
        worker_text, worker1 = scrape(client, worker_metrics, WORKER_API_TOKEN)
        assert client.get(worker_metrics).status_code == 401  # the worker's token guards it

    assert (from_space.status_code, from_space.headers["x-chat-backend"]) == (200, "space")
    assert refused.status_code == 429
    assert last["x_chat"]["backend"] == "worker"

    def router_moved(name: str, **labels: str) -> float:
        return moved(router0, router1, name, **labels)

    assert router_moved("router_requests_total", route="space", backend="worker",
                        fallback="space_sleeping", status="200") == 1
    assert router_moved("router_requests_total", route="worker", backend="worker",
                        fallback="none", status="200") == 1
    assert router_moved("router_requests_total", route="space", backend="space",
                        fallback="none", status="200") == 1
    assert router_moved("router_requests_total", route="none", backend="none",
                        fallback="none", status="429") == 1
    assert total(router1, "router_requests_total") - total(router0, "router_requests_total") == 4
    assert router_moved("router_attempts_total", route="space") == \
        int(fell_back.headers["x-chat-attempts"]) + int(from_space.headers["x-chat-attempts"])
    assert router_moved("router_attempts_total", route="worker") == last["x_chat"]["attempts"]
    assert router_moved("router_quota_refusals_total", quota="requests") == 1
    assert router_moved("router_space_wakes_total", backend="space", outcome="restarted") == 1
    assert router_moved("router_space_wake_seconds_count", backend="space") == 1
    assert router_moved("router_time_to_first_token_seconds_count", backend="worker") == 1
    assert router_moved("router_request_duration_seconds_count", backend="worker",
                        streamed="true") == 1
    assert router_moved("router_request_duration_seconds_count", backend="worker",
                        streamed="false") == 1
    worker_usage = [fell_back.json()["usage"], last["usage"]]
    assert router_moved("router_tokens_total", backend="worker", direction="out") == \
        sum(u["completion_tokens"] for u in worker_usage)
    assert router_moved("router_tokens_total", backend="worker", direction="in") == \
        sum(u["prompt_tokens"] for u in worker_usage)
    assert router_moved("router_tokens_total", backend="space", direction="out") == \
        from_space.json()["usage"]["completion_tokens"]
    assert router1[("router_circuit_state", (("backend", "space"), ("state", "closed")))] == 1
    assert streamed_headers["x-chat-backend"] == "worker"

    # The worker generated twice (the fallback answer, the stream): its own counts agree.
    assert total(worker1, "ai_space_requests_total") - \
        total(worker0, "ai_space_requests_total") == 2
    assert moved(worker0, worker1, "ai_space_tokens_total", direction="out") == \
        sum(u["completion_tokens"] for u in worker_usage)
    assert moved(worker0, worker1, "ai_space_tokens_total", direction="in") == \
        sum(u["prompt_tokens"] for u in worker_usage)
    assert moved(worker0, worker1, "ai_space_batch_size_count") == 2
    assert worker1[("ai_space_queue_depth", ())] == 0
    assert worker1[("ai_space_running_requests", ())] == 0
    assert ("ai_space_engine_info", (("device", "cpu"), ("engine", "transformers"))) in worker1

    # The dashboard graphs only metrics that the two servers really serve.
    served_names = {name for name, _ in (*router1, *worker1)}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p.get("targets", [])]
    wanted = {n for e in exprs for n in re.findall(r"\b(?:router|ai_space)_[a-z_]+", e)}
    assert wanted and wanted - LLAMA_ONLY <= served_names, wanted - served_names

    for leak in (PROMPT, "metrics-prompt", WORKER_API_TOKEN, SPACE_TOKEN, HF_TOKEN,
                 *stack["urls"], "127.0.0.1"):
        assert leak not in text and leak not in worker_text, leak
