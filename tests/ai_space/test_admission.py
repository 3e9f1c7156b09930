"""Loading, queueing, batching and cancellation, held deterministically by the server's gates."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ai_space import Finished, Hooks, Settings
from tests.ai_space.conftest import TOKEN, serve

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello world"}]
MakeClient = Callable[..., openai.OpenAI]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 60.0


def test_503_with_retry_after_while_loading(tiny_settings: Settings,
                                            make_client: MakeClient) -> None:
    """GIVEN loading held by the load gate WHEN /health and chat are called THEN both answer 503
    with Retry-After, and /health says loading; WHEN the gate opens THEN the server is ready."""
    gate = threading.Event()
    with serve(tiny_settings, Hooks(load_gate=gate), wait=False) as (server, app):
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503
        assert health.headers["retry-after"].isdigit()
        assert health.json()["status"] == "loading"
        chat = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH,
                          json={"messages": HELLO})
        assert chat.status_code == 503
        assert chat.headers["retry-after"].isdigit()
        assert chat.json()["error"]["code"] == "model_loading"
        with pytest.raises(openai.InternalServerError) as raised:
            make_client(server.url).chat.completions.create(model="m", messages=HELLO)
        assert raised.value.status_code == 503
        gate.set()
        assert app.state.host.wait_loaded(WAIT_S)
        assert httpx.get(f"{server.url}/health").json()["status"] == "ready"


def test_load_failure_reports_error(tiny_settings: Settings, tmp_path: object) -> None:
    """GIVEN a MODEL_ID folder with no model in it WHEN loading ends THEN /health says error
    (503, no Retry-After) and chat answers 503 model_error."""
    broken = tiny_settings.model_copy(update={"model_id": str(tmp_path)})
    with serve(broken, wait=False) as (server, app):
        assert app.state.host.wait_loaded(WAIT_S)
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "error"
        assert "retry-after" not in health.headers
        chat = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH,
                          json={"messages": HELLO})
        assert chat.json()["error"]["code"] == "model_error"


def test_429_with_retry_after_when_queue_is_full(tiny_settings: Settings,
                                                 make_client: MakeClient) -> None:
    """GIVEN MAX_CONCURRENCY=1, MAX_QUEUE=1, one generation held running and one queued
    WHEN a third request comes THEN 429 with Retry-After; WHEN the gate opens THEN the two
    admitted requests complete."""
    settings = tiny_settings.model_copy(update={"max_concurrency": 1, "max_queue": 1})
    step = threading.Event()
    with serve(settings, Hooks(step_gate=step)) as (server, _):
        client = make_client(server.url)
        # The first chunk (the role) is sent on admission, so reading it proves admission.
        first = client.chat.completions.create(model="m", messages=HELLO,
                                               max_tokens=4, stream=True)
        second = client.chat.completions.create(model="m", messages=HELLO,
                                                max_tokens=4, stream=True)
        heads = [next(iter(first)), next(iter(second))]
        assert all(h.choices[0].delta.role == "assistant" for h in heads)
        third = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH,
                           json={"messages": HELLO, "max_tokens": 4})
        assert third.status_code == 429
        assert third.headers["retry-after"].isdigit()
        assert third.json()["error"]["type"] == "rate_limit_error"
        step.set()
        texts = ["".join(c.choices[0].delta.content or "" for c in s) for s in (first, second)]
        assert all(texts)


def test_concurrent_requests_are_batched_and_match_sequential(tiny_settings: Settings,
                                                              make_client: MakeClient) -> None:
    """GIVEN greedy answers computed one at a time WHEN three prompts of different lengths
    are queued behind a held generation THEN they run as one batch of 3 (left-padded) and
    each answer equals its one-at-a-time answer."""
    prompts = ["hi", "what is the capital of france?", "write a short poem about the sea"]
    finished: queue.Queue[Finished] = queue.Queue()
    step = threading.Event()
    step.set()
    with serve(tiny_settings, Hooks(step_gate=step, on_finish=finished.put)) as (server, _):
        client = make_client(server.url)

        def ask(text: str) -> str:
            answer = client.chat.completions.create(
                model="m", max_tokens=10, temperature=0,
                messages=[{"role": "user", "content": text}])
            return answer.choices[0].message.content or ""

        alone = [ask(p) for p in prompts]
        assert [finished.get(timeout=WAIT_S).batch_size for _ in prompts] == [1, 1, 1]
        step.clear()
        blocker = client.chat.completions.create(model="m", messages=HELLO,
                                                 max_tokens=2, stream=True)
        next(iter(blocker))
        streams = [client.chat.completions.create(
            model="m", max_tokens=10, temperature=0, stream=True,
            messages=[{"role": "user", "content": p}]) for p in prompts]
        for s in streams:
            next(iter(s))
        step.set()
        list(blocker)
        together = ["".join(c.choices[0].delta.content or "" for c in s) for s in streams]
        sizes = sorted(finished.get(timeout=WAIT_S).batch_size for _ in range(4))
    assert together == alone
    assert sizes == [1, 3, 3, 3]


def test_client_disconnect_stops_its_generation(tiny_settings: Settings,
                                                make_client: MakeClient) -> None:
    """GIVEN a streaming request held before its first forward pass WHEN the client closes
    the connection THEN its generation ends as cancelled without producing a token."""
    finished: queue.Queue[Finished] = queue.Queue()
    step = threading.Event()
    with serve(tiny_settings, Hooks(step_gate=step, on_finish=finished.put)) as (server, _):
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=AUTH,
                          json={"messages": HELLO, "max_tokens": 64, "stream": True}) as resp:
            first = next(resp.iter_lines())
            assert first.startswith("data: ")
        # Leaving the block closes the connection; the gate stays shut the whole time.
        event = finished.get(timeout=WAIT_S)
        step.set()
    assert event.finish_reason == "cancelled"
    assert event.completion_tokens == 0


def test_disconnect_while_waiting_for_a_whole_answer(tiny_settings: Settings,
                                                     make_client: MakeClient) -> None:
    """GIVEN a non-streaming request held by the gate WHEN its client gives up and goes away
    THEN its generation ends as cancelled."""
    finished: queue.Queue[Finished] = queue.Queue()
    step = threading.Event()
    with serve(tiny_settings, Hooks(step_gate=step, on_finish=finished.put)) as (server, _):
        with pytest.raises(httpx.ReadTimeout):
            # The gate guarantees no answer; the timeout is only how this client gives up.
            httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=0.5,
                       json={"messages": HELLO, "max_tokens": 64})
        event = finished.get(timeout=WAIT_S)
        step.set()
    assert event.finish_reason == "cancelled"
    assert event.completion_tokens == 0
