"""A buffered answer is the stream, collected (issue 24): the function's chat, and the
service's `stream: false`, go through the same loop as a true stream and carry everything it
carried: content, reasoning, tool calls, logprobs and usage.

The real `main` with DigitalOcean events, scripted stream backends on loopback
(tests/fakes/stream_backend.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from router import FunctionContext
from tests.conftest import load_event, with_body
from tests.fakes.stream_backend import StreamBackend, logprob_of
from tests.support.streams import ASK, MESSAGES, service_env

FULL_WORDS = [f"t{i}" if i == 0 else f" t{i}" for i in range(10)]
FULL = "".join(FULL_WORDS)
LONG = " ".join(f"w{i}" for i in range(25))


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


def test_the_function_keeps_reasoning_in_its_folded_answer(make_main,
                                                           backends: dict[str, StreamBackend],
                                                           hub: Any):
    """GIVEN the function (buffered) and a Space that thinks before answering WHEN asked
    without streaming THEN the completion's message keeps `reasoning_content`."""
    backends["space"].reasoning = "r0 r1"
    main = make_main(service_env(backends["worker"].url, backends["space"].url, hub.url))
    result = main(with_body("chat_completions_llm", {**ASK, "stream": False}),
                  FunctionContext.with_timeout(28_000))
    message = json.loads(result["body"])["choices"][0]["message"]
    assert (message["content"], message.get("reasoning_content")) == (FULL, "r0 r1")


def test_the_function_never_counts_a_producing_stream_cut_at_its_share(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN the function (buffered) with a 2 s deadline and a Space producing 25 words 0.1 s
    apart, past its 1 s share WHEN asked three times (BREAKER_FAILURES) THEN the worker answers
    each time within the deadline, and the Space's circuit is still closed: a stream still
    producing when its time ran out is not a failure of that backend."""
    backends["space"].text, backends["space"].every_s = LONG, 0.1
    main = make_main(service_env(backends["worker"].url, backends["space"].url, hub.url,
                                 ROUTER_DEADLINE_MS="2000", FALLBACK_RESERVE_MS="1000",
                                 FIRST_TOKEN_TIMEOUT_MS="600", STREAM_STALL_TIMEOUT_MS="400"))
    for _ in range(3):
        result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
        assert result["headers"]["x-chat-backend"] == "worker"
        assert json.loads(result["body"])["choices"][0]["message"]["content"] == FULL
    states = json.loads(main(load_event("health"), FunctionContext.with_timeout(28_000))["body"])
    assert states["backends"]["space"]["circuit"] == "closed"


def test_the_function_folds_a_streamed_tool_call(make_main,
                                                 backends: dict[str, StreamBackend], hub: Any):
    """GIVEN the function (buffered) and a Space that answers with a streamed tool call
    WHEN asked, streamed and not THEN the completion's message carries the whole call (name,
    id, all its arguments) and `finish_reason: tool_calls`, and the buffered stream carries the
    Space's tool-call deltas as they came; nothing of it is dropped."""
    import json

    backends["space"].tool_call, backends["space"].text = "get_weather", '{"city": "Paris"}'
    main = make_main(service_env(backends["worker"].url, backends["space"].url, hub.url))
    result = main(with_body("chat_completions_llm", {**ASK, "stream": False}),
                  FunctionContext.with_timeout(28_000))
    choice = json.loads(result["body"])["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    streamed = main(with_body("chat_completions_llm", ASK), FunctionContext.with_timeout(28_000))
    events = [json.loads(line[6:]) for line in streamed["body"].split("\n")
              if line.startswith("data: {")]
    calls = [call for e in events if e["choices"]
             for call in e["choices"][0]["delta"].get("tool_calls") or []]
    # The Space's own deltas: the call's id and name first, then its arguments in pieces.
    assert (calls[0]["id"], calls[0]["function"]["name"]) == ("call_0", "get_weather")
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert {c["index"] for c in calls} == {0}
