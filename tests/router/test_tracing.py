"""Issue 20: the `ask` function's traces. Off (no OTEL_EXPORTER_OTLP_ENDPOINT), nothing of them
is loaded and no backend request carries `traceparent`; on, the spans of a fallback reach a
real OTLP/HTTP receiver on loopback before `main` returns."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from router._do_event import FunctionContext
from tests.conftest import HF_TOKEN, SPACE_TOKEN, WORKER_TOKEN, load_event
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.otlp import OtlpReceiver
from tests.support.loopback import LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
COLD = r"""
import importlib.util, json, sys
# As the platform loads it: the entry file alone, not the tools.
spec = importlib.util.spec_from_file_location("ask_main", "packages/chat/ask/__main__.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
main = module.main
event = json.loads(sys.argv[1])
class Ctx:
    def get_remaining_time_in_millis(self):
        return 20000
answer = main(event, Ctx())
print(json.dumps({"status": answer["statusCode"],
                  "loaded": sorted(m for m in sys.modules if m in (
                      "router._tracing", "prometheus_client", "opentelemetry"))}))
"""


def test_tracing_off_loads_nothing_and_sends_no_traceparent(worker: FakeBackend):
    """GIVEN the function without OTEL_EXPORTER_OTLP_ENDPOINT, in a fresh interpreter
    WHEN it answers a chat from a caller that sent a `traceparent` THEN neither the tracer nor
    any metrics or OpenTelemetry package was imported, and the worker got no `traceparent`."""
    event = load_event("chat_completions", headers={
        "content-type": "application/json",
        "traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"})
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "LOG_LEVEL": "WARNING"})
    ran = subprocess.run([sys.executable, "-c", COLD, json.dumps(event)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out == {"status": 200, "loaded": []}
    assert [s.headers.get("traceparent") for s in worker.seen] == [None]


def test_the_functions_spans_leave_before_main_returns(make_main, worker: FakeBackend,
                                                        space: FakeBackend):
    """GIVEN the function exporting to an OTLP receiver and a sleeping Space WHEN an `llm`
    chat falls back to the worker THEN, as soon as `main` returns, the receiver holds the
    request's SERVER span (a new trace: no caller context) and the Space's failed and the
    worker's attempt spans, with the fallback reason; and no exported byte carries a token,
    a URL or the prompt."""
    space.mode = "sleeping"
    receiver = OtlpReceiver()
    with LoopbackServer(receiver) as otlp:
        main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                          "SPACE_URL": space.url, "SPACE_TOKEN": SPACE_TOKEN,
                          "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url})
        answer = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(20_000))
        spans = list(receiver.spans)  # no wait: `main` flushed them
    assert answer["statusCode"] == 200
    assert answer["headers"]["x-chat-fallback"] == "space_sleeping"
    assert len(spans) == 3, spans
    request = next(s for s in spans if s.kind == 2)
    assert not request.parent_span_id and request.service == "chat-router"
    assert request.attributes["chat.fallback"] == "space_sleeping"
    assert request.attributes["chat.streamed"] is False
    failed, served = sorted((s for s in spans if s.kind == 3), key=lambda s: s.start_ns)
    assert failed.attributes["chat.backend"] == "space"
    assert failed.attributes["error.type"] == "space_sleeping"
    assert served.attributes["chat.backend"] == "worker" and served.status_code == 0
    assert space.seen[0].headers["traceparent"] == \
        f"00-{request.trace_id}-{failed.span_id}-01"
    exported = "".join(receiver.raw)
    prompt = json.loads(load_event("chat_completions_llm")["http"]["body"])["messages"][-1]
    for leak in (WORKER_TOKEN, SPACE_TOKEN, HF_TOKEN, worker.url, space.url, otlp.url,
                 prompt["content"]):
        assert leak not in exported, leak


def test_a_collector_that_is_down_costs_the_answer_nothing(make_main, worker: FakeBackend,
                                                             caplog):
    """GIVEN the function exporting to a collector address where nothing listens WHEN it
    answers a chat THEN the answer is the worker's 200, and one warning says the traces were
    not exported, naming the error's type only (no collector URL)."""
    with socket.socket() as sock:  # a free port, closed again: connections are refused
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                      "OTEL_EXPORTER_OTLP_ENDPOINT": closed})
    with caplog.at_level(logging.WARNING, logger="router.trace"):
        answer = main(load_event("chat_completions"), FunctionContext.with_timeout(20_000))
        main.__globals__["FUNCTION"].router().observer.flush(5)
    assert answer["statusCode"] == 200
    warnings = [r for r in caplog.records if r.name == "router.trace"]
    assert [r.getMessage() for r in warnings] == ["traces not exported"]
    assert warnings[0].fields == {"reason": "ConnectError", "failed_exports": 1,
                                  "dropped_spans": 2, "interval_s": 60}
    assert closed not in caplog.text
