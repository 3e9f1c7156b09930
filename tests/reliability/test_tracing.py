"""Issue 20: the service's traces reach a real OTLP/HTTP receiver on loopback, continuing the
caller's `traceparent` and passing it on, for a stream that the Space cut and the worker
finished; no span carries a prompt, a token, a key or a backend URL.

The worker is ai_space on a tiny model (our own fallback, so the real one); the Space a fake
streaming backend that cuts its stream after 3 tokens.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

from tests.conftest import SPACE_TOKEN
from tests.fakes.otlp import HeaderTap, OtlpReceiver
from tests.fakes.stream_backend import StreamBackend
from tests.reliability.conftest import WORKER_API_TOKEN, served
from tests.support.service import serve_main

pytestmark = pytest.mark.slow

PROMPT = "trace-prompt-51b0 tell me a story"
SERVER, CLIENT = 2, 3


def test_a_stream_that_failed_over_is_one_trace_continued_from_the_caller(
        make_main, worker_server: str):
    """GIVEN the service exporting to an OTLP receiver, a Space that cuts its stream after 3
    tokens and the real worker WHEN a caller with a `traceparent` streams an `llm` chat
    THEN the receiver gets one SERVER span (child of the caller's span, GenAI attributes,
    chat.backend=worker, the fallback reason) and two CLIENT attempt spans under it (the
    Space's failed, the worker's not); each backend got a `traceparent` naming its attempt's
    span; and no exported byte carries the prompt, a token or a backend URL."""
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    receiver = OtlpReceiver()
    space = HeaderTap(StreamBackend("space", mode="cut", after=3))
    with served(receiver) as otlp_url, served(space) as space_url:
        main = make_main({"WORKER_URL": worker_server, "WORKER_TOKEN": WORKER_API_TOKEN,
                          "SPACE_URL": space_url, "SPACE_TOKEN": SPACE_TOKEN,
                          "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
                          "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-key=otlp-secret-9c1",
                          "OTEL_SERVICE_NAME": "chat-router-test"})
        service = serve_main(main, namespace="trace", port=0)
        try:
            body = {"model": "llm", "max_tokens": 4, "stream": True,
                    "messages": [{"role": "user", "content": PROMPT}]}
            last: dict[str, Any] = {}
            with httpx.Client(timeout=30) as client, client.stream(
                    "POST", service.function_url + "/v1/chat/completions", json=body,
                    headers={"traceparent": f"00-{trace_id}-{caller_span}-01"}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        last = json.loads(line[6:])
            spans = receiver.wait_for(3, 10)
        finally:
            service.stop()

    facts = last["x_chat"]
    assert (facts["backend"], facts["attempts"], facts["route"]) == ("worker", 2, "space")
    assert facts["fallback"]
    assert len(spans) == 3, spans
    request = next(s for s in spans if s.kind == SERVER)
    attempts = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_ns)
    assert {s.trace_id for s in spans} == {trace_id}
    assert request.parent_span_id == caller_span
    assert request.service == "chat-router-test"
    # GenAI conventions: the model the caller asked for, and the one that answered (the
    # worker's served name, as its answer named it).
    assert request.name == "chat llm"
    attrs = request.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "llm"
    assert attrs["gen_ai.response.model"] == "tiny"
    assert (attrs["chat.backend"], attrs["chat.route"], attrs["chat.attempts"]) == \
        ("worker", "space", 2)
    assert attrs["chat.fallback"] == facts["fallback"]
    assert attrs["chat.streamed"] is True and attrs["http.response.status_code"] == 200
    assert [(s.attributes["chat.backend"], s.attributes["chat.attempt"]) for s in attempts] == \
        [("space", 1), ("worker", 2)]
    assert all(s.parent_span_id == request.span_id for s in attempts)
    assert attempts[0].status_code == 2 and attempts[0].attributes["error.type"]
    assert attempts[1].status_code == 0 and "error.type" not in attempts[1].attributes
    assert attempts[0].attributes["gen_ai.request.model"] == "llm"
    # The Space got the trace, under its attempt's span.
    assert space.traceparents == [f"00-{trace_id}-{attempts[0].span_id}-01"]
    assert attempts[0].end_ns <= attempts[1].start_ns <= request.end_ns

    exported = "".join(receiver.raw)
    for leak in (PROMPT, "trace-prompt", WORKER_API_TOKEN, SPACE_TOKEN, "otlp-secret-9c1",
                 worker_server, space_url, otlp_url, "127.0.0.1"):
        assert leak not in exported, leak
