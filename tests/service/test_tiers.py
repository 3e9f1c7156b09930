"""A tier of several deployments under concurrent load, through the service and the real
openai client (issue 26): the split by weight, and a scaled-to-zero Inference Endpoint that is
resumed once while its tier answers, then takes its share again."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import ENDPOINT_ID, HF_TOKEN, WORKER_TOKEN
from tests.fakes.endpoints import EndpointProxy, FakeEndpointsApi
from tests.fakes.openai_backend import FakeBackend
from tests.support.service import serve_main
from tests.support.tiers import deployments, llm_env

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def gpus() -> Iterator[dict[str, FakeBackend]]:
    """Two plain OpenAI-compatible servers for the LLM tier."""
    with deployments("gpu-a", "gpu-b") as fakes:
        yield fakes


def burst(base_url: str, count: int) -> list[tuple[dict[str, str], str]]:
    """`count` concurrent `llm` chats with the real async openai client: for each, the
    answer's headers and its text."""
    async def one(client: openai.AsyncOpenAI) -> tuple[dict[str, str], str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="llm", messages=MESSAGES)  # type: ignore[arg-type]
        return dict(raw.headers), raw.parse().choices[0].message.content or ""

    async def run() -> list[tuple[dict[str, str], str]]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused",
                                      max_retries=0) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(count))))

    return asyncio.run(run())


def test_thirty_concurrent_requests_split_within_a_fifth_of_the_weights(
        make_main, worker: FakeBackend, gpus: dict[str, FakeBackend]):
    """GIVEN gpu-a (weight 2) and gpu-b (weight 1), both healthy and taking 0.3 s an answer,
    behind the service WHEN 30 `llm` chats arrive at once THEN each deployment's share is
    within ±20 % of its weight's (20 and 10), every caller gets its answer, and each answer's
    X-Chat-Backend names the deployment whose words it holds."""
    for fake in gpus.values():
        fake.mode, fake.delay_s = "slow", 0.3
    main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                      **llm_env(gpus, gpu_a="weight=2")})
    service = serve_main(main, namespace="tiers", port=0)
    try:
        answers = burst(service.function_url + "/v1", 30)
    finally:
        service.stop()
    named = Counter(headers["x-chat-backend"] for headers, _ in answers)
    assert 16 <= named["gpu-a"] <= 24 and 8 <= named["gpu-b"] <= 12
    assert named["gpu-a"] + named["gpu-b"] == 30
    for headers, text in answers:
        assert text.startswith(headers["x-chat-backend"] + ":")
    assert gpus["gpu-a"].generation_requests() == named["gpu-a"]
    assert worker.generation_requests() == 0


@pytest.mark.parametrize("state", ["scaledToZero", "paused"])
def test_a_sleeping_endpoint_is_resumed_once_and_then_takes_its_share(
        make_main, worker: FakeBackend, gpus: dict[str, FakeBackend], state: str,
        endpoints_api: FakeEndpointsApi, endpoint: EndpointProxy):
    """GIVEN an LLM tier of gpu-a and the Inference Endpoint `ep` (equal weights), `ep` scaled
    to zero (its proxy answers 503, and its autoscaler has not yet acted) or paused (502)
    WHEN 20 `llm` chats arrive at once THEN every one is answered by gpu-a, none waiting for
    `ep` to start (the usual fallback: a waiting one would get `ep`'s answer, 0.3 s later),
    `resume` reaches the endpoints API exactly once; and once the endpoint runs, `ep` answers
    its share of the next ten chats again."""
    endpoint.set_state(state)
    main = make_main({
        "WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "HF_TOKEN": HF_TOKEN,
        "HF_ENDPOINTS_API": endpoints_api.url, "SPACE_PROBE_S": "0.05",
        "LLM_DEPLOYMENTS": llm_env({"gpu-a": gpus["gpu-a"]})["LLM_DEPLOYMENTS"]
        + f"; ep kind=endpoint url={endpoint.url} token=HF_TOKEN id={ENDPOINT_ID}",
        "TOKEN_GPU_A": "tok-gpu-a"})
    service = serve_main(main, namespace="ep", port=0)
    try:
        first = burst(service.function_url + "/v1", 20)
        assert endpoints_api.running.wait(10), "the endpoint never came up"
        # One at a time now, as most callers come: the probe that closes ep's circuit first.
        later = [burst(service.function_url + "/v1", 1)[0] for _ in range(10)]
    finally:
        service.stop()
    assert {headers["x-chat-backend"] for headers, _ in first} == {"gpu-a"}
    reasons = Counter(headers.get("x-chat-fallback") for headers, _ in first)
    assert set(reasons) <= {None, "endpoint_starting", "circuit_open"}
    assert reasons["endpoint_starting"] >= 1
    assert endpoints_api.resumes == 1
    taken = Counter(headers["x-chat-backend"] for headers, _ in later)
    assert 4 <= taken["ep"] <= 6, taken
    assert worker.generation_requests() == 0

