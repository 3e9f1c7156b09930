"""Continuing an answer after a mid-stream failover (issue 18, items 2, 5 and 8): only the
tokens still owed, one answer with no repeats when the fallback refuses a prefill, a restart
after a tool-call delta, and the request's own fields on the fallback.

Scripted backends on loopback (tests/fakes/stream_backend.py); the real SmolLM2 worker's
continuation is in test_stream_continuation_real.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router._continuation import RESTART_MARKER
from tests.fakes.stream_backend import StreamBackend
from tests.support.streams import ASK, read_stream, running_service, service_env

SIXTY = " ".join(f"w{i}" for i in range(60))


def _service(make_main: Callable[[dict[str, str]], Any], backends: dict[str, StreamBackend],
             hub: Any) -> Any:
    env = service_env(backends["worker"].url, backends["space"].url, hub.url,
                      ROUTER_DEADLINE_MS="6000", FALLBACK_RESERVE_MS="3000",
                      FIRST_TOKEN_TIMEOUT_MS="600", STREAM_STALL_TIMEOUT_MS="400")
    return running_service(make_main, env)


def test_the_fallback_is_asked_only_for_the_tokens_still_owed(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN `max_tokens: 8` and a Space cut after 3 words WHEN the worker continues THEN it is
    asked for 5 tokens, and the client reads 8 words in all, ending with `length`."""
    backends["space"].mode = "cut"
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service, {**ASK, "max_tokens": 8})
    continued = backends["worker"].bodies[-1]
    assert continued["messages"][-1] == {"role": "assistant", "content": "t0 t1 t2"}
    assert continued["max_tokens"] == 5
    assert seen.text == " ".join(f"t{i}" for i in range(8))
    assert [c["choices"][0]["finish_reason"] for c in seen.chunks
            if c["choices"] and c["choices"][0]["finish_reason"]] == ["length"]


def test_a_refused_prefill_that_says_the_same_is_not_read_twice(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space cut after 40 of 60 words and a worker that refuses prefills but would say
    the same 60 words WHEN it answers again in full THEN what repeats the 40 words is held back:
    the client reads the 60 words once, with no marker."""
    for fake in backends.values():
        fake.text = SIXTY
    backends["space"].mode, backends["space"].after = "cut", 40
    backends["worker"].refuse_prefill = True
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service)
    assert (seen.text, seen.done) == (SIXTY, True)
    assert backends["worker"].bodies[-1]["messages"][-1]["role"] == "user"


def test_a_refused_prefill_that_diverges_restarts_after_the_marker(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space cut after 40 of 60 words and a worker that refuses prefills and whose own
    answer departs from the Space's at word 20 WHEN it answers again THEN the client reads the
    40 words, the marker, and the worker's whole answer, once."""
    other = " ".join([f"w{i}" for i in range(20)] + [f"x{i}" for i in range(20, 60)])
    backends["space"].text, backends["worker"].text = SIXTY, other
    backends["space"].mode, backends["space"].after = "cut", 40
    backends["worker"].refuse_prefill = True
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service)
    head = " ".join(f"w{i}" for i in range(40))
    assert (seen.text, seen.done) == (head + RESTART_MARKER + other, True)


def test_the_request_fields_reach_both_backends_unchanged(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a request with tools, tool_choice, response_format, logprobs and penalties, and a
    Space cut after 3 words WHEN the worker continues THEN both backends got every one of those
    fields as sent."""
    fields: dict[str, Any] = {
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}}},
        "logprobs": True, "top_logprobs": 2, "presence_penalty": 0.5,
        "frequency_penalty": 0.25, "user": "u-1", "parallel_tool_calls": False,
    }
    backends["space"].mode = "cut"
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service, {**ASK, **fields})
    assert seen.done
    for fake in backends.values():
        sent = fake.bodies[-1]
        assert {name: sent.get(name) for name in fields} == fields


def test_an_undocumented_field_is_refused_by_name(make_main,
                                                  backends: dict[str, StreamBackend],
                                                  hub: Any):
    """GIVEN a request with a field OpenAI does not document WHEN sent THEN a 400 names it
    (nothing is dropped silently), and no backend is asked."""
    import httpx

    with _service(make_main, backends, hub) as service:
        answer = httpx.post(f"{service.function_url}/v1/chat/completions",
                            json={**ASK, "best_guess": 3}, timeout=10)
    assert answer.status_code == 400
    assert "best_guess" in answer.json()["error"]["message"]
    assert backends["space"].bodies == backends["worker"].bodies == []


def test_a_tool_call_already_sent_is_restarted_after_the_marker(
        make_main, backends: dict[str, StreamBackend], hub: Any):
    """GIVEN a Space that streams a tool call and is cut after 3 pieces of its arguments
    WHEN the worker takes over THEN a tool-call delta cannot be continued: the worker gets the
    request without a prefill, and its whole answer follows the marker, after the tool-call
    deltas the client already has."""
    backends["space"].mode, backends["space"].tool_call = "cut", "get_weather"
    with _service(make_main, backends, hub) as service:
        seen = read_stream(service)
    sent_calls = [c for c in seen.chunks if c["choices"] and
                  c["choices"][0]["delta"].get("tool_calls")]
    assert len(sent_calls) == 4  # the call's name, then 3 pieces of its arguments
    assert backends["worker"].bodies[-1]["messages"][-1]["role"] == "user"
    assert (seen.text, seen.done) == (RESTART_MARKER + " ".join(f"t{i}" for i in range(10)),
                                      True)
