"""A tier of several deployments, through the real `main` (issue 26): the choice by weight, the
next deployment of the tier before the other tier, a dead one skipped once its circuit opens,
a longer context first after a context-length refusal, one GPU budget and one deadline."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ENDPOINT_ID, HF_TOKEN, WORKER_TOKEN, Main, with_body
from tests.fakes.endpoints import EndpointProxy, FakeEndpointsApi
from tests.fakes.openai_backend import FakeBackend
from tests.support.access import ask, ctx
from tests.support.redis_server import RedisServer
from tests.support.tiers import deployments, llm_env

LLM = {"model": "llm", "messages": [{"role": "user", "content": "hello"}]}
TOO_LONG = {"error": {"code": "context_length_exceeded", "type": "invalid_request_error",
                      "message": "This model's maximum context length is 4096 tokens"}}


@pytest.fixture
def gpus() -> Iterator[dict[str, FakeBackend]]:
    """Three plain OpenAI-compatible servers for the LLM tier."""
    with deployments("gpu-a", "gpu-b", "gpu-c") as fakes:
        yield fakes


def base_env(worker: FakeBackend) -> dict[str, str]:
    """The worker alone (no SPACE_URL): the LLM tier comes from LLM_DEPLOYMENTS."""
    return {"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "ROUTER_DEADLINE_MS": "3000",
            "FALLBACK_RESERVE_MS": "1500", "CONNECT_TIMEOUT_MS": "1000"}


def chat(main: Main, body: dict[str, Any] = LLM) -> dict[str, Any]:
    """One chat through the real handler, its body decoded."""
    result = main(with_body("chat_completions", body), ctx())
    return {**result, "json": json.loads(result["body"])}


def test_idle_requests_split_by_weight(make_main, worker: FakeBackend,
                                       gpus: dict[str, FakeBackend]):
    """GIVEN gpu-a (weight 2) and gpu-b (weight 1), nothing in flight (the function serves one
    request at a time) WHEN 30 `llm` requests come one after another THEN they split 20/10 give
    or take one (the round-robin's phase), each answer names its deployment and no fallback,
    the worker and gpu-c (not configured) see none, and /v1/models names both as serving
    `llm`."""
    two = {name: gpus[name] for name in ("gpu-a", "gpu-b")}
    main = make_main({**base_env(worker), **llm_env(two, gpu_a="weight=2")})
    answers = [chat(main) for _ in range(30)]
    named = Counter(answer["headers"]["x-chat-backend"] for answer in answers)
    assert abs(named["gpu-a"] - 20) <= 1 and named["gpu-a"] + named["gpu-b"] == 30
    for answer in answers:
        backend = answer["headers"]["x-chat-backend"]
        assert answer["json"]["choices"][0]["message"]["content"].startswith(f"{backend}:")
        assert "x-chat-fallback" not in answer["headers"]
    assert gpus["gpu-a"].generation_requests() == named["gpu-a"]
    assert worker.generation_requests() == 0 and gpus["gpu-c"].seen == []
    models = json.loads(main(with_body("models", {}), ctx())["body"])["data"]
    assert {m["id"]: m["served_by"] for m in models}["llm"] == "gpu-a,gpu-b"


def test_a_dead_deployment_gets_nothing_once_its_circuit_opens(make_main, worker: FakeBackend,
                                                               gpus: dict[str, FakeBackend]):
    """GIVEN gpu-a and gpu-b, equal weights, and gpu-a then dying (503) WHEN 12 `llm`
    requests come THEN every caller gets gpu-b's 200 (the next of the tier, never the worker);
    gpu-a is asked exactly BREAKER_FAILURES=3 times and then no more; the answers after that
    are clean first choices (no fallback header)."""
    two = {name: gpus[name] for name in ("gpu-a", "gpu-b")}
    main = make_main({**base_env(worker), **llm_env(two), "BREAKER_COOLDOWN_S": "600"})
    gpus["gpu-a"].mode = "status:503"
    answers = [chat(main) for _ in range(12)]
    assert [a["statusCode"] for a in answers] == [200] * 12
    assert {a["headers"]["x-chat-backend"] for a in answers} == {"gpu-b"}
    fallbacks = [a["headers"].get("x-chat-fallback") for a in answers]
    assert fallbacks.count("unavailable") == 3 == gpus["gpu-a"].generation_requests()
    last = max(i for i, reason in enumerate(fallbacks) if reason)
    assert fallbacks[last + 1:] == [None] * (11 - last) and last <= 6
    assert worker.generation_requests() == 0
    states = main.__globals__["FUNCTION"].router().engine.breaker_states()
    assert (states["gpu-a"], states["gpu-b"]) == ("open", "closed")


def test_the_whole_tier_before_the_other_tier_under_one_deadline(
        make_main, worker: FakeBackend, gpus: dict[str, FakeBackend]):
    """GIVEN gpu-a and gpu-b both hanging, ROUTER_DEADLINE_MS=3000 WHEN an `llm` request
    comes THEN both are tried, each within its share, and the worker answers inside the one
    deadline, with the first failure's reason."""
    two = {name: gpus[name] for name in ("gpu-a", "gpu-b")}
    main = make_main({**base_env(worker), **llm_env(two)})
    gpus["gpu-a"].mode = gpus["gpu-b"].mode = "hang"
    started = time.monotonic()
    answer = chat(main)
    elapsed = time.monotonic() - started
    assert (answer["statusCode"], answer["headers"]["x-chat-backend"]) == (200, "worker")
    assert answer["headers"]["x-chat-fallback"] == "timeout"
    assert answer["headers"]["x-chat-attempts"] == "3"
    assert gpus["gpu-a"].generation_requests() == gpus["gpu-b"].generation_requests() == 1
    assert elapsed < 3.1


def test_a_context_refusal_moves_to_a_larger_window_first(make_main, worker: FakeBackend,
                                                          gpus: dict[str, FakeBackend]):
    """GIVEN gpu-a (context 8192, chosen first by weight), gpu-b (4096, next by weight) and
    gpu-c (32768, weight 1) WHEN gpu-a refuses a prompt as too long THEN gpu-c, the one with a
    larger window, answers: gpu-b, whose window is smaller, is never asked, nor the worker."""
    main = make_main({**base_env(worker), **llm_env(
        gpus, gpu_a="weight=1000 context=8192", gpu_b="weight=100 context=4096",
        gpu_c="weight=1 context=32768")})
    gpus["gpu-a"].mode, gpus["gpu-a"].error_body = "status:400", TOO_LONG
    answer = chat(main)
    assert (answer["statusCode"], answer["headers"]["x-chat-backend"]) == (200, "gpu-c")
    assert answer["headers"]["x-chat-fallback"] == "context_length_exceeded"
    assert gpus["gpu-b"].seen == [] and worker.generation_requests() == 0
    # The refusing deployment is fine: its circuit stays closed.
    assert main.__globals__["FUNCTION"].router().engine.breaker_states()["gpu-a"] == "closed"


def test_one_gpu_budget_for_every_llm_deployment(make_main, worker: FakeBackend,
                                                 gpus: dict[str, FakeBackend],
                                                 redis_server: RedisServer):
    """GIVEN LLM_RATE_LIMIT_PER_MINUTE=1 (in Redis), gpu-a failing and gpu-b healthy WHEN one
    client sends two `llm` chats THEN the first is counted once though it reached two LLM
    deployments (gpu-b answers it), and the second, over the one budget, goes to neither: the
    worker answers it with `X-Chat-Fallback: quota`."""
    two = {name: gpus[name] for name in ("gpu-a", "gpu-b")}
    main = make_main({**base_env(worker), **llm_env(two, gpu_a="weight=1000"),
                      "LLM_RATE_LIMIT_PER_MINUTE": "1", "REDIS_URL": redis_server.url})
    gpus["gpu-a"].mode = "status:503"
    first, second = chat(main), chat(main)
    assert (first["headers"]["x-chat-backend"], first["headers"]["x-chat-fallback"]) == (
        "gpu-b", "unavailable")
    assert (second["headers"]["x-chat-backend"], second["headers"]["x-chat-fallback"]) == (
        "worker", "quota")
    assert gpus["gpu-a"].generation_requests() == gpus["gpu-b"].generation_requests() == 1


def test_an_endpoint_alone_scaled_to_zero_falls_to_the_worker_and_health_shows_it(
        make_main, worker: FakeBackend, endpoints_api: FakeEndpointsApi,
        endpoint: EndpointProxy):
    """GIVEN the LLM tier is one Inference Endpoint, scaled to zero WHEN an `llm` chat comes
    THEN the worker answers at once (`endpoint_starting`), the endpoint is resumed through the
    endpoints API (its status read first); and /health lists each deployment with its tier,
    kind, circuit and the endpoint's wake state, by name only."""
    endpoint.set_state("scaledToZero")
    main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                      "HF_TOKEN": HF_TOKEN, "HF_ENDPOINTS_API": endpoints_api.url,
                      "LLM_DEPLOYMENTS": f"ep kind=endpoint url={endpoint.url} token=HF_TOKEN "
                                         f"id={ENDPOINT_ID} instance=nvidia-a10g-x1"})
    started = time.monotonic()
    answer = chat(main)
    assert time.monotonic() - started < 1.0
    assert (answer["headers"]["x-chat-backend"], answer["headers"]["x-chat-fallback"]) == (
        "worker", "endpoint_starting")
    assert endpoints_api.running.wait(10), "the endpoint was never resumed"
    assert endpoints_api.resumes == 1
    assert endpoints_api.calls[:2] == [("GET", f"/v2/endpoint/{ENDPOINT_ID}"),
                                       ("POST", f"/v2/endpoint/{ENDPOINT_ID}/resume")]
    health = ask(main, {}, "health")
    backends = health["json"]["backends"]
    assert set(backends) == {"worker", "ep"}
    assert backends["worker"] == {"tier": "small", "kind": "worker", "weight": 1,
                                  "circuit": "closed", "in_flight": 0}
    assert backends["ep"]["tier"] == "llm" and backends["ep"]["kind"] == "endpoint"
    assert backends["ep"]["wake"]["configured"] is True
    assert backends["ep"]["wake"]["state"] == "initializing"
    assert backends["ep"]["wake"]["woken"] is True
    assert endpoint.url not in health["body"] and HF_TOKEN not in health["body"]
