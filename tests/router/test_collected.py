"""A buffered answer is the stream, collected (issue 24): the function's chat, and the
service's `stream: false`, go through the same loop as a true stream and carry everything it
carried: content, reasoning, tool calls, logprobs and usage.

The real `main` with DigitalOcean events, scripted stream backends on loopback
(tests/fakes/stream_backend.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router import FunctionContext
from tests.conftest import load_event, with_body
from tests.fakes.stream_backend import StreamBackend, logprob_of
from tests.support.streams import MESSAGES, service_env, stream_backends

FULL_WORDS = [f"t{i}" if i == 0 else f" t{i}" for i in range(10)]


@pytest.fixture
def backends() -> Iterator[dict[str, StreamBackend]]:
    with stream_backends() as fakes:
        yield fakes


def _ask(make_main: Callable[[dict[str, str]], Any], backends: dict[str, StreamBackend],
         hub: Any, body: dict[str, Any], **settings: str) -> dict[str, Any]:
    main = make_main(service_env(backends["worker"].url, backends["space"].url, hub.url,
                                 **settings))
    result: dict[str, Any] = main(with_body("chat_completions_llm", body),
                                  FunctionContext.with_timeout(28_000))
    return result


def _sse_chunks(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.split("\n")
            if line.startswith("data: {")]


@pytest.mark.parametrize("mode", ["ok", "json"])
def test_a_buffered_chat_returns_the_backends_logprobs(
        make_main, backends: dict[str, StreamBackend], hub: Any, mode: str):
    """GIVEN a Space that gives each word's logprobs, streamed (`ok`) or as one JSON answer
    (`json`, a backend that ignores `stream: true`) WHEN the function is asked for a chat with
    `logprobs: true`, not streamed THEN the completion carries the Space's logprobs, one entry
    per word, in order."""
    backends["space"].mode = mode
    result = _ask(make_main, backends, hub, {"model": "llm", "messages": MESSAGES,
                                             "logprobs": True})
    assert result["statusCode"] == 200, result["body"]
    choice = json.loads(result["body"])["choices"][0]
    assert choice["logprobs"]["content"] == [logprob_of(word) for word in FULL_WORDS]
    assert backends["space"].bodies[0]["logprobs"] is True


def test_the_functions_buffered_stream_carries_the_logprobs(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space that gives logprobs WHEN the function is asked for `stream: true` (one
    buffered text/event-stream body) THEN the chunks carry the logprobs of every word."""
    result = _ask(make_main, backends, hub, {"model": "llm", "messages": MESSAGES,
                                             "logprobs": True, "stream": True})
    assert result["statusCode"] == 200, result["body"]
    entries = [entry for chunk in _sse_chunks(result["body"]) if chunk.get("choices")
               for entry in ((chunk["choices"][0].get("logprobs") or {}).get("content") or [])]
    assert entries == [logprob_of(word) for word in FULL_WORDS]


def test_a_buffered_answer_whose_backend_fails_part_way_starts_again(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space cut after 3 words WHEN the function is asked for a chat (one body: the
    client holds nothing until the end) THEN the worker starts the answer again, whole: it is
    asked the question as it came (no assistant prefill), and the answer, its id and its usage
    are the worker's alone (the Space's 3 words are in no part of it)."""
    backends["space"].mode = "cut"
    result = _ask(make_main, backends, hub, {"model": "llm", "messages": MESSAGES})
    assert result["statusCode"] == 200, result["body"]
    answer = json.loads(result["body"])
    assert answer["choices"][0]["message"]["content"] == "".join(FULL_WORDS)
    assert answer["id"] == "chatcmpl-worker"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}
    assert backends["worker"].bodies[-1]["messages"] == MESSAGES
    assert (result["headers"]["x-chat-backend"], result["headers"]["x-chat-fallback"]) == (
        "worker", "unavailable")
    assert result["headers"]["x-chat-attempts"] == "2"


def test_the_functions_buffered_stream_is_the_services_stream_collected(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a healthy Space WHEN the function is asked for `stream: true` with include_usage
    THEN its one body is the stream the service would send: the Space's chunks, the finish
    chunk carrying `x_chat` (the same facts as the headers), the usage chunk, `[DONE]`."""
    result = _ask(make_main, backends, hub, {"model": "llm", "messages": MESSAGES,
                                             "stream": True,
                                             "stream_options": {"include_usage": True}})
    assert result["statusCode"] == 200, result["body"]
    assert result["headers"]["content-type"] == "text/event-stream"
    chunks = _sse_chunks(result["body"])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"]) == "".join(FULL_WORDS)
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["x_chat"] for c in finish] == [{"backend": "space", "fallback": None,
                                              "attempts": 1, "route": "space"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert result["body"].endswith("data: [DONE]\n\n")


def test_the_function_path_buffers_but_checks_the_same(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN the function (no service) and a Space that answers a cut SSE stream to a
    `stream: false` request WHEN asked THEN it is a failure (the worker answers), never a
    truncated success; a complete SSE answer is accepted whole."""
    main = make_main(service_env(backends["worker"].url, backends["space"].url, hub.url))
    backends["space"].mode, backends["space"].force_stream = "cut", True
    result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    assert result["headers"]["x-chat-backend"] == "worker"
    backends["space"].mode = "ok"
    result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    assert result["headers"]["x-chat-backend"] == "space"
    assert "".join(FULL_WORDS) in result["body"]
