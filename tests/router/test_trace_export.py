"""Issue 25, item 8: a collector that hangs or fails costs the function's answers nothing.
Once a flush has timed out, the function stops waiting on that collector until an export
succeeds again; what is dropped is counted and said in one log line per interval, not one per
request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router._do_event import FunctionContext
from tests.conftest import WORKER_TOKEN, load_event
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.otlp import OtlpReceiver
from tests.support.loopback import LoopbackServer


@pytest.fixture
def collector() -> Iterator[tuple[OtlpReceiver, str]]:
    """An OTLP receiver on loopback (its URL), let go of at teardown."""
    receiver = OtlpReceiver()
    with LoopbackServer(receiver) as server:
        try:
            yield receiver, server.url
        finally:
            receiver.hanging.clear()


def _function(make_main: Callable[[dict[str, str]], Any], worker: FakeBackend, url: str
              ) -> tuple[Callable[[], None], Any]:
    main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                      "OTEL_EXPORTER_OTLP_ENDPOINT": url})

    def ask() -> None:
        answer = main(load_event("chat_completions"), FunctionContext.with_timeout(20_000))
        assert answer["statusCode"] == 200

    return ask, main.__globals__["FUNCTION"].router().observer


def test_after_one_flush_times_out_the_function_stops_waiting_until_an_export_succeeds(
        make_main, worker: FakeBackend, collector):
    """GIVEN the function exporting to a collector that takes requests and never answers
    WHEN one answer's flush has timed out THEN the next flush returns at once, though it may
    wait an hour, while the collector still holds the first export (before, every answer
    waited out its bounded flush: ~250 ms each); and once the collector answers again and an
    export succeeds, `main` again returns only after its spans have left."""
    receiver, url = collector
    receiver.hanging.set()
    ask, observer = _function(make_main, worker, url)
    ask()  # its flush times out: the collector holds the export
    ask()
    flushed = threading.Thread(target=observer.flush, args=(3600,), daemon=True)
    flushed.start()
    flushed.join(30)
    assert not flushed.is_alive(), "the flush waited on a collector that hangs"
    assert receiver.held == 1 and not receiver.gave_up.is_set(), \
        "the flush returned only after the exporter gave up on the collector"
    receiver.hanging.clear()
    # Both answers' spans arrive: the held export got its 200, so the one after it was sent.
    assert len(receiver.wait_for(4, 30)) == 4
    ask()
    assert len(receiver.spans) == 6, "main returned before its spans had left"


def test_a_failing_collector_is_reported_once_per_interval_with_what_was_dropped(
        make_main, worker: FakeBackend, collector, caplog):
    """GIVEN the function exporting to a collector that answers 500 WHEN ten requests are
    answered THEN each answer is the worker's 200, and the router logs one warning for all of
    them (before: one per request), counting the failed export and its dropped spans, naming
    no URL."""
    receiver, url = collector
    receiver.status = 500
    ask, observer = _function(make_main, worker, url)
    with caplog.at_level(logging.WARNING, logger="router.trace"):
        for _ in range(10):
            ask()
        observer.flush(30)
    lines = [r for r in caplog.records if r.name == "router.trace"]
    assert [r.getMessage() for r in lines] == ["traces not exported"]
    assert lines[0].fields == {"reason": "status 500", "failed_exports": 1, "dropped_spans": 2,
                               "interval_s": 60}
    assert url not in caplog.text
