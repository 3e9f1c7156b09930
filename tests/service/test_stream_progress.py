"""A service stream judged by its progress (issue 18, items 1, 3, 4, 6 and 7): long answers,
reasoning models, the last chunk's facts, hang-ups, and one identity per stream.

Real service on uvicorn, real httpx and openai clients, scripted backends on loopback
(tests/fakes/stream_backend.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.stream_backend import StreamBackend
from tests.support.streams import (
    ASK,
    MESSAGES,
    health,
    read_stream,
    running_service,
    service_env,
)

FULL = " ".join(f"t{i}" for i in range(10))
LONG = " ".join(f"w{i}" for i in range(25))


def _service(make_main: Callable[[dict[str, str]], Any], backends: dict[str, StreamBackend],
             hub: Any, **settings: str) -> Any:
    env = service_env(backends["worker"].url, backends["space"].url, hub.url,
                      **{"ROUTER_DEADLINE_MS": "2000", "FALLBACK_RESERVE_MS": "1000",
                         "FIRST_TOKEN_TIMEOUT_MS": "600", "STREAM_STALL_TIMEOUT_MS": "400",
                         **settings})
    return running_service(make_main, env)


def test_a_long_healthy_stream_outlives_the_old_share_and_closes_no_circuit(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN both backends streaming 25 words 0.1 s apart (2.5 s, past the 1 s share and the
    2 s ROUTER_DEADLINE_MS) WHEN three streams are read through the service THEN each is the
    Space's whole answer with `[DONE]`, and both circuits are still closed afterwards."""
    for fake in backends.values():
        fake.text, fake.every_s = LONG, 0.1
    with _service(make_main, backends, hub) as service:
        for _ in range(3):
            seen = read_stream(service)
            assert (seen.text, seen.done) == (LONG, True)
            assert seen.chunks[-1]["x_chat"]["backend"] == "space"
            assert seen.chunks[-1]["x_chat"]["fallback"] is None
        circuits = {name: b["circuit"] for name, b in health(service)["backends"].items()}
    assert circuits == {"space": "closed", "worker": "closed"}
    assert len(backends["worker"].bodies) == 0


def test_a_slow_but_steady_stream_is_not_switched_before_its_stall_limit(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space that sends a word every 0.3 s (under the 0.4 s stall limit) for 3 s
    WHEN streamed THEN the Space keeps the stream to its end: the worker is never asked."""
    backends["space"].every_s = 0.3
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service)
    assert (seen.text, seen.done, seen.chunks[-1]["x_chat"]["backend"]) == (FULL, True, "space")
    assert backends["worker"].bodies == []


def test_the_caller_deadline_ending_mid_answer_is_no_backends_failure(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN STREAM_DEADLINE_MS of 1.2 s and a Space producing 25 words 0.1 s apart WHEN three
    streams run out of that deadline mid-answer THEN each ends with a `deadline_exceeded` error
    event and no `[DONE]`, no other backend is asked, and no circuit opens."""
    for fake in backends.values():
        fake.text, fake.every_s = LONG, 0.1
    with _service(make_main, backends, hub, STREAM_DEADLINE_MS="1200") as service:
        for _ in range(3):
            started = time.monotonic()
            seen = read_stream(service)
            assert time.monotonic() - started < 2.0
            assert not seen.done
            assert seen.events[-1]["error"]["code"] == "deadline_exceeded"
        circuits = {name: b["circuit"] for name, b in health(service)["backends"].items()}
    assert circuits == {"space": "closed", "worker": "closed"}
    assert backends["worker"].bodies == []


def test_every_chunk_has_a_choice_for_the_common_client_loop(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a healthy stream WHEN the openai client reads it with the tutorials' loop,
    `chunk.choices[0].delta.content`, sync and async THEN no IndexError: the text is whole, and
    `x_chat` rides on the chunk that carries the finish_reason."""
    import asyncio

    with _service(make_main, backends, hub) as service:
        base = f"{service.function_url}/v1"
        with openai.OpenAI(base_url=base, api_key="unused", max_retries=0) as client:
            text, facts = "", None
            for chunk in client.chat.completions.create(model="llm", stream=True,
                                                        messages=MESSAGES):
                text += chunk.choices[0].delta.content or ""
                if chunk.choices[0].finish_reason:
                    facts = (chunk.model_extra or {}).get("x_chat")
        assert (text, facts and facts["backend"]) == (FULL, "space")

        async def read_async() -> str:
            async with openai.AsyncOpenAI(base_url=base, api_key="unused",
                                          max_retries=0) as client:
                out = ""
                async for chunk in await client.chat.completions.create(
                        model="llm", stream=True, messages=MESSAGES):
                    out += chunk.choices[0].delta.content or ""
                return out

        assert asyncio.run(read_async()) == FULL


def test_an_empty_choices_chunk_comes_only_for_include_usage(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN `stream_options.include_usage` WHEN streamed THEN one last chunk has `choices: []`
    and the usage; without it, none has empty choices."""
    with _service(make_main, backends, hub) as service:
        plain = read_stream(service)
        usage = read_stream(service, {**ASK, "stream_options": {"include_usage": True}})
    assert all(c["choices"] for c in plain.chunks)
    assert [c for c in usage.chunks if not c["choices"]] == [usage.chunks[-1]]
    assert usage.chunks[-1]["usage"]["completion_tokens"] == 10


def test_thinking_counts_as_the_first_token(make_main, backends: dict[str, StreamBackend],
                                           hub: Any):
    """GIVEN a Space that thinks (reasoning_content deltas 0.2 s apart) for 1.6 s, past the
    0.6 s first-token limit, before answering WHEN streamed THEN the Space keeps the stream: the
    client gets its reasoning and its answer, the headers and `x_chat` both name the Space."""
    backends["space"].reasoning = " ".join(f"r{i}" for i in range(8))
    backends["space"].every_s = 0.2
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service)
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or ""
                        for c in seen.chunks if c["choices"])
    assert reasoning == backends["space"].reasoning
    assert (seen.text, seen.done) == (FULL, True)
    assert seen.headers["x-chat-backend"] == seen.chunks[-1]["x_chat"]["backend"] == "space"
    assert backends["worker"].bodies == []


def test_a_client_that_hangs_up_during_a_stall_ends_the_work_at_once(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space that stalls after 3 words WHEN the client reads them and hangs up THEN
    the Space's stream is closed within 0.3 s (not at the next chunk), and no worker request is
    opened after the client left, not even once the stall limit has passed."""
    backends["space"].mode = "stall"
    with _service(make_main, backends, hub) as service, httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{service.function_url}/v1/chat/completions",
                           json=ASK) as response:
            lines = response.iter_lines()
            while "t2" not in next(lines):
                pass
            left = time.monotonic()
        assert backends["space"].dropped.wait(2.0)
        assert time.monotonic() - left < 0.3
        # An observation window one stall limit (0.4 s) long, plus slack: nothing may start.
        assert not backends["worker"].requested.wait(0.8)


def test_one_stream_keeps_one_identity_across_a_failover(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space cut after 3 words WHEN the worker continues the answer THEN every chunk
    keeps the first chunk's id, model and created, and with include_usage the usage counts the
    Space's 3 words as well as the worker's 7."""
    backends["space"].mode = "cut"
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service, {**ASK, "stream_options": {"include_usage": True}})
    assert seen.text == FULL and seen.done
    assert {(c["id"], c["model"], c["created"]) for c in seen.chunks} == {
        ("chatcmpl-space", "space", 1)}
    assert seen.chunks[-1]["usage"]["completion_tokens"] == 10


def test_headers_wait_for_the_first_content(make_main, backends: dict[str, StreamBackend],
                                            hub: Any):
    """GIVEN a Space that sends its role-only chunk and then fails before any content
    WHEN streamed THEN the headers name the worker (who answered), not the Space, and the client
    sees a single role chunk."""
    backends["space"].mode, backends["space"].after = "cut", 0
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service)
    assert seen.headers["x-chat-backend"] == "worker"
    assert seen.headers["x-chat-fallback"] == "unavailable"
    assert seen.text == FULL
    assert sum(1 for c in seen.chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1


@pytest.mark.parametrize("stream", [True, False])
def test_a_backends_404_reaches_the_caller(make_main, backends: dict[str, StreamBackend],
                                           hub: Any, stream: bool):
    """GIVEN a Space that answers 404 (say, a model it does not serve) WHEN asked, streamed or
    not THEN the caller gets a 400 with the provider's code, and the worker is never asked."""
    backends["space"].mode = "status:404"
    with _service(make_main, backends, hub) as service:
        answer = httpx.post(f"{service.function_url}/v1/chat/completions",
                            json={**ASK, "stream": stream}, timeout=10)
    assert answer.status_code == 400
    assert backends["worker"].bodies == []


def test_a_client_that_hangs_up_before_the_first_token_ends_the_work(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space that is silent for 2 s before its first token WHEN the client hangs up
    once the Space has the request (no headers have reached it yet) THEN the Space's stream is
    closed within 0.3 s, and the worker is never asked, not even after the 0.6 s first-token
    limit has passed."""
    import json
    import socket
    from urllib.parse import urlsplit

    backends["space"].mode, backends["space"].delay_s = "late_first", 2.0
    with _service(make_main, backends, hub) as service:
        url = urlsplit(f"{service.function_url}/v1/chat/completions")
        body = json.dumps(ASK).encode()
        with socket.create_connection((url.hostname or "", url.port or 80)) as sock:
            sock.sendall(f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                         "Content-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert backends["space"].requested.wait(5.0)
        left = time.monotonic()
        assert backends["space"].dropped.wait(2.0)
        assert time.monotonic() - left < 0.3
        assert not backends["worker"].requested.wait(1.0)
