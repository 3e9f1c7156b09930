"""Issue 25, item 12: W3C trace context. A caller's `traceparent` that says "not sampled" is
honoured (no span is exported, and the backend hears "not sampled"), its `tracestate` travels on
unchanged, and a header the W3C rules call invalid starts a new trace."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router._do_event import FunctionContext
from tests.conftest import WORKER_TOKEN, load_event
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.otlp import OtlpReceiver
from tests.support.loopback import LoopbackServer

TRACE, PARENT = os.urandom(16).hex(), os.urandom(8).hex()
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@pytest.fixture
def traced(make_main: Callable[[dict[str, str]], Any], worker: FakeBackend
           ) -> Iterator[tuple[Callable[[dict[str, str]], dict[str, Any]], OtlpReceiver]]:
    """The function exporting to an OTLP receiver; `ask(headers)` sends it a chat."""
    receiver = OtlpReceiver()
    with LoopbackServer(receiver) as otlp:
        main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                          "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url})

        def ask(headers: dict[str, str]) -> dict[str, Any]:
            event = load_event("chat_completions",
                               headers={"content-type": "application/json", **headers})
            answer: dict[str, Any] = main(event, FunctionContext.with_timeout(20_000))
            assert answer["statusCode"] == 200
            return answer

        yield ask, receiver


def test_a_caller_that_does_not_sample_gets_no_spans_and_passes_it_on(traced, worker):
    """GIVEN the function exporting traces WHEN a caller sends `traceparent` with the sampled
    flag off (`-00`) and a `tracestate` THEN the worker gets the same trace id, a new parent
    id, the flag still off and the `tracestate` unchanged; and no span of that trace is
    exported (a sampled request after it is, so the exporter was working)."""
    ask, receiver = traced
    ask({"traceparent": f"00-{TRACE}-{PARENT}-00", "tracestate": STATE})
    sampled = os.urandom(16).hex()
    ask({"traceparent": f"00-{sampled}-{PARENT}-01"})
    spans = receiver.wait_for(2, 10)
    version, trace_id, parent, flags = worker.seen[0].headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "00")
    assert parent != PARENT
    assert worker.seen[0].headers["tracestate"] == STATE
    assert {span.trace_id for span in spans} == {sampled}


def test_a_sampled_caller_keeps_its_tracestate(traced, worker):
    """GIVEN the function exporting traces WHEN a caller sends a sampled `traceparent` and a
    `tracestate` THEN the worker gets the trace (flag on, the attempt span as parent) and the
    `tracestate` unchanged, and the request's span is the caller's span's child."""
    ask, receiver = traced
    ask({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": STATE})
    spans = receiver.wait_for(2, 10)
    request = next(span for span in spans if span.kind == 2)
    attempt = next(span for span in spans if span.kind == 3)
    assert request.parent_span_id == PARENT
    assert worker.seen[0].headers["traceparent"] == f"00-{TRACE}-{attempt.span_id}-01"
    assert worker.seen[0].headers["tracestate"] == STATE


@pytest.mark.parametrize("traceparent", [
    f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex is not allowed
    f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
    f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
    f"00-{'0' * 32}-{PARENT}-01",  # an all-zero trace id
])
def test_an_invalid_traceparent_starts_a_new_trace_without_its_tracestate(
        traced, worker, traceparent: str):
    """GIVEN the function exporting traces WHEN a caller's `traceparent` breaks a W3C rule
    THEN the request starts a trace of its own (no parent span, a new trace id), and the
    caller's `tracestate`, which belongs to the invalid parent, is not passed on."""
    ask, receiver = traced
    ask({"traceparent": traceparent, "tracestate": STATE})
    spans = receiver.wait_for(2, 10)
    request = next(span for span in spans if span.kind == 2)
    assert not request.parent_span_id
    assert request.trace_id != TRACE.lower()
    assert worker.seen[0].headers["traceparent"].split("-")[1] == request.trace_id
    assert "tracestate" not in worker.seen[0].headers


def test_a_later_version_is_read_by_its_first_four_fields(traced, worker):
    """GIVEN the function exporting traces WHEN a caller sends a `traceparent` of a later
    version (`01`) with a field after the flags THEN the trace continues (W3C: a later
    version is parsed as version 00 where it can be), and goes on as version 00."""
    ask, receiver = traced
    ask({"traceparent": f"01-{TRACE}-{PARENT}-01-future"})
    spans = receiver.wait_for(2, 10)
    request = next(span for span in spans if span.kind == 2)
    assert (request.trace_id, request.parent_span_id) == (TRACE, PARENT)
    assert worker.seen[0].headers["traceparent"].startswith(f"00-{TRACE}-")
