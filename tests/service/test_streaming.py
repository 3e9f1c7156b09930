"""The service's true streams, through the real `openai` client, against backends that break
their streams on purpose over real HTTP (tests/fakes/stream_backend.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from router_service import Service
from tests.conftest import HF_TOKEN, SPACE_ID, SPACE_TOKEN, WORKER_TOKEN
from tests.fakes.stream_backend import StreamBackend
from tests.support.service import serve_main

FULL = " ".join(f"t{i}" for i in range(10))
FIRST_TOKEN_MS = 600
STALL_MS = 400


@pytest.fixture
def service(make_main: Callable[[dict[str, str]], Any], backends: dict[str, StreamBackend],
            hub: Any) -> Iterator[Service]:
    env = {"WORKER_URL": backends["worker"].url, "WORKER_TOKEN": WORKER_TOKEN,
           "SPACE_URL": backends["space"].url, "SPACE_TOKEN": SPACE_TOKEN,
           "SPACE_ID": SPACE_ID, "HF_TOKEN": HF_TOKEN, "HF_ENDPOINT": hub.url,
           "ROUTER_DEADLINE_MS": "6000", "FALLBACK_RESERVE_MS": "3000",
           "FIRST_TOKEN_TIMEOUT_MS": str(FIRST_TOKEN_MS),
           "STREAM_STALL_TIMEOUT_MS": str(STALL_MS)}
    server = serve_main(make_main(env), namespace="stream", port=0)
    yield server
    server.stop()


def _stream(service: Service) -> tuple[str, list[str | None], dict[str, Any], float]:
    """Stream an `llm` chat; (text, finish reasons, x_chat, seconds taken)."""
    started = time.monotonic()
    with openai.OpenAI(base_url=f"{service.function_url}/v1", api_key="unused",
                       max_retries=0, timeout=20) as client:
        stream = client.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "Write a proposal."}],
            stream=True)
        text: list[str] = []
        finishes: list[str | None] = []
        facts: dict[str, Any] = {}
        for chunk in stream:
            facts = (chunk.model_extra or {}).get("x_chat", facts)
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finishes.append(choice.finish_reason)
    return "".join(text), [f for f in finishes if f], facts, time.monotonic() - started


def test_a_healthy_stream_arrives_whole_with_its_facts_last(service: Service,
                                                           backends: dict[str, StreamBackend]):
    """GIVEN a healthy streaming Space WHEN the openai client streams an `llm` chat
    THEN it gets the whole answer, one finish_reason, and `x_chat` naming the Space; the
    Space was asked for a real stream."""
    text, finishes, facts, _ = _stream(service)
    assert (text, finishes) == (FULL, ["stop"])
    assert facts == {"backend": "space", "fallback": None, "attempts": 1, "route": "space"}
    assert backends["space"].bodies[0]["stream"] is True


@pytest.mark.parametrize(("mode", "reason"), [
    ("late_first", "timeout"), ("no_headers", "timeout"), ("status:503", "space_starting"),
])
def test_a_failure_before_content_is_taken_over_unseen(
        service: Service, backends: dict[str, StreamBackend], mode: str, reason: str):
    """GIVEN a Space whose first token is late (2 s), that sends no headers, or that is starting
    WHEN a stream is asked for THEN the worker's stream takes over before any content: the client
    sees one clean answer, within the first-token limit (+ slack), and `x_chat` says why."""
    backends["space"].mode, backends["space"].delay_s = mode, 2.0
    text, finishes, facts, took = _stream(service)
    assert (text, finishes) == (FULL, ["stop"])
    assert facts["backend"] == "worker" and facts["fallback"] == reason
    assert took < FIRST_TOKEN_MS / 1000 + 0.5


@pytest.mark.parametrize(("mode", "reason"), [
    ("stall", "timeout"), ("cut", "unavailable"), ("malformed", "error"),
    ("error_event", "unavailable"),
])
def test_a_failure_after_content_is_continued_by_the_other_backend(
        service: Service, backends: dict[str, StreamBackend], mode: str, reason: str):
    """GIVEN a Space that stalls, is cut, sends a malformed chunk or an error event after
    3 tokens WHEN streamed THEN the worker continues the partial answer (assistant prefill):
    the client gets the complete answer once, never a truncated one with a finish_reason, and
    never the malformed chunk."""
    backends["space"].mode = mode
    text, finishes, facts, took = _stream(service)
    assert (text, finishes) == (FULL, ["stop"])
    assert facts["backend"] == "worker" and facts["fallback"] == reason
    prefill = backends["worker"].bodies[-1]["messages"][-1]
    assert prefill == {"role": "assistant", "content": "t0 t1 t2"}
    assert took < 3.0


def test_a_backend_refusing_the_prefill_says_the_rest_once(
        service: Service, backends: dict[str, StreamBackend]):
    """GIVEN a Space cut after 3 tokens and a worker that refuses an assistant prefill
    WHEN streamed THEN the worker answers again in full, and what repeats the 3 tokens the
    client has is held back: the answer is read once, with no marker (it never diverged)."""
    backends["space"].mode = "cut"
    backends["worker"].refuse_prefill = True
    text, finishes, facts, _ = _stream(service)
    assert text == FULL
    assert finishes == ["stop"] and facts["backend"] == "worker"


def test_a_backend_answering_json_is_relayed_as_a_stream(service: Service,
                                                         backends: dict[str, StreamBackend]):
    """GIVEN a Space that ignores `stream: true` and answers one JSON completion WHEN streamed
    THEN the client still gets the answer as a stream, from the Space."""
    backends["space"].mode = "json"
    text, finishes, facts, _ = _stream(service)
    assert (text, finishes, facts["backend"]) == (FULL, ["stop"], "space")


def test_a_finish_without_done_ends_at_once(service: Service,
                                            backends: dict[str, StreamBackend]):
    """GIVEN a Space that sends its finish_reason but never `[DONE]` and keeps the connection
    WHEN streamed THEN the answer ends at once (not at the deadline), from the Space."""
    backends["space"].mode = "no_done"
    text, finishes, facts, took = _stream(service)
    assert (text, finishes, facts["backend"]) == (FULL, ["stop"], "space")
    assert took < 1.0


def test_no_backend_able_to_finish_ends_with_an_error_event(
        service: Service, backends: dict[str, StreamBackend]):
    """GIVEN both backends cut their streams after 3 tokens WHEN streamed THEN the openai
    client raises on the stream's error event: no answer that looks finished."""
    backends["space"].mode = backends["worker"].mode = "cut"
    with pytest.raises(openai.APIError):
        _stream(service)


def test_a_longer_context_is_tried_on_the_other_backend_in_a_stream_too(
        service: Service, backends: dict[str, StreamBackend]):
    """GIVEN a Space that answers 400 `context_length_exceeded` (the worker may have a larger
    window) WHEN streamed THEN the worker's stream answers, unseen, and `x_chat` says why: the
    same reroute as a collected answer's (one loop decides both)."""
    backends["space"].mode, backends["space"].error_code = "status:400", "context_length_exceeded"
    text, finishes, facts, _ = _stream(service)
    assert (text, finishes) == (FULL, ["stop"])
    assert (facts["backend"], facts["fallback"]) == ("worker", "context_length_exceeded")


def test_a_streams_log_line_is_written_when_it_ends_with_what_happened(
        service: Service, backends: dict[str, StreamBackend]):
    """GIVEN a Space cut after 3 tokens WHEN the stream is read to its end THEN its one log
    line, written when the stream ended, tells what its last chunk's `x_chat` tells: the worker
    finished it, after `unavailable`, in 2 attempts; the line's `attempts` is a number."""
    import logging
    import threading

    lines: list[dict[str, Any]] = []
    written = threading.Event()

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "request":
                lines.append(getattr(record, "fields", {}))
                written.set()

    logger = logging.getLogger("router.request")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        backends["space"].mode = "cut"
        _, _, facts, _ = _stream(service)
        # The client stops at `[DONE]`; the service writes the line once its relay has ended.
        assert written.wait(5.0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(lines) == 1
    line = lines[0]
    assert (line["backend"], line["fallback"], line["attempts"], line["route"]) == (
        facts["backend"], facts["fallback"], facts["attempts"], facts["route"]) == (
        "worker", "unavailable", 2, "space")
