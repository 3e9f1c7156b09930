"""Issue 25, items 9-11 and 13, in the `ask` function: a refusal is traced with its status; a
log line and its trace share one id each way (the log line carries the trace id, the span the
request id); spans follow OpenTelemetry's GenAI conventions (the model asked for, the model that
answered, embedding tokens); /health is not traffic; and every log line is JSON with a number
for `attempts` and an RFC 3339 UTC `time`."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from router._do_event import FunctionContext
from tests.conftest import WORKER_TOKEN, load_event, with_body
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.otlp import OtlpReceiver, Span
from tests.support.loopback import LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
KEY = "join-key-4b1e9c0d7a"
# What the Space and the worker serve (their `model` in an answer), unlike the aliases asked.
SPACE_MODEL, WORKER_MODEL = "smollm2-1.7b-instruct", "smollm2-135m-instruct"
Ask = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture
def traced(make_main: Callable[[dict[str, str]], Any], env: dict[str, str]
           ) -> Iterator[tuple[Ask, OtlpReceiver]]:
    """The function (worker, Space, Hub fakes) exporting to an OTLP receiver on loopback."""
    receiver = OtlpReceiver()
    with LoopbackServer(receiver) as otlp:
        main = make_main({**env, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
                          "SPACE_MODEL": SPACE_MODEL, "WORKER_MODEL": WORKER_MODEL})

        def ask(event: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = main(event, FunctionContext.with_timeout(20_000))
            return answer

        yield ask, receiver


def _server_span(spans: list[Span], trace_id: str | None = None) -> Span:
    found = [s for s in spans if s.kind == 2 and trace_id in (None, s.trace_id)]
    assert len(found) == 1, spans
    return found[0]


def test_the_functions_refusal_is_traced_with_its_status(make_main, worker: FakeBackend):
    """GIVEN the function with API_KEYS, exporting traces WHEN a chat comes without a key
    THEN its 401 is a SERVER span of its own: status code 401, `error.type` our error code,
    and the request id the answer carried."""
    receiver = OtlpReceiver()
    with LoopbackServer(receiver) as otlp:
        main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                          "API_KEYS": KEY, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url})
        answer = main(load_event("chat_completions"), FunctionContext.with_timeout(20_000))
        spans = receiver.wait_for(1, 10)
    assert answer["statusCode"] == 401
    span = _server_span(spans)
    assert span.attributes["http.response.status_code"] == 401
    assert span.attributes["error.type"] == json.loads(answer["body"])["error"]["code"]
    assert span.attributes["chat.request_id"] == answer["headers"]["x-request-id"]


def test_the_model_asked_for_and_the_model_that_answered(traced, space: FakeBackend):
    """GIVEN the function exporting traces WHEN a chat asks for `llm` (the Space answers), and
    /ai/chat, /ai/generate and /v1/embeddings are asked THEN each SERVER span's
    `gen_ai.request.model` is the name the caller sent (`llm`; `auto` where /ai/* sent none;
    `small`) and `gen_ai.response.model` the model the backend named in its answer; the span
    is named `{operation} {requested model}`; the embeddings span counts its input tokens."""
    ask, receiver = traced
    cases = [("chat_completions_llm", "llm", "chat"), ("ai_chat", "auto", "chat"),
             ("ai_generate", "auto", "chat"), ("embeddings", "small", "embeddings")]
    served = {"space": SPACE_MODEL, "worker": WORKER_MODEL}
    answers = [ask(load_event(name)) for name, *_ in cases]
    assert [a["statusCode"] for a in answers] == [200] * 4
    spans = receiver.wait_for(len(cases) * 2, 10)
    by_request = {s.attributes["chat.request_id"]: s for s in spans if s.kind == 2}
    for answer, (name, asked, op) in zip(answers, cases, strict=True):
        span = by_request[answer["headers"]["x-request-id"]]
        assert span.attributes["gen_ai.request.model"] == asked, name
        assert span.attributes["gen_ai.response.model"] == \
            served[answer["headers"]["x-chat-backend"]], name
        assert span.name == f"{op} {asked}", name
    embedded = by_request[answers[3]["headers"]["x-request-id"]]
    inputs = json.loads(load_event("embeddings")["http"]["body"])["input"]
    assert embedded.attributes["gen_ai.usage.input_tokens"] == len(inputs)  # the fake's count
    assert answers[0]["headers"]["x-chat-backend"] == "space"
    assert space.seen[0].body is not None and space.seen[0].body["model"] == SPACE_MODEL
    # The Space's request span: the model sent to it, and the model it named back.
    [to_space] = [s for s in spans if s.kind == 3 and s.trace_id == by_request[
        answers[0]["headers"]["x-request-id"]].trace_id]
    assert (to_space.attributes["gen_ai.request.model"],
            to_space.attributes["gen_ai.response.model"]) == (SPACE_MODEL, SPACE_MODEL)


def test_health_is_not_traced(traced):
    """GIVEN the function exporting traces WHEN /health is polled, then a chat is asked
    THEN only the chat's spans are exported: a page's liveness poll is not traffic."""
    ask, receiver = traced
    assert ask(load_event("health"))["statusCode"] == 200
    chat = ask(load_event("chat_completions"))
    spans = receiver.wait_for(2, 10)
    assert [s.attributes.get("http.request.method") for s in spans if s.kind == 2] == ["POST"]
    assert _server_span(spans).attributes["chat.request_id"] == chat["headers"]["x-request-id"]


def test_the_wake_line_names_the_request_that_asked_for_it(make_main, env, space, hub, caplog):
    """GIVEN the function in front of a sleeping Space it may wake WHEN an `llm` chat falls
    back THEN the `wake checked` line carries the request id (and trace id) of the request
    whose fallback asked for the wake: one id leads from the wake to the request."""
    space.mode = "sleeping"
    receiver = OtlpReceiver()
    with LoopbackServer(receiver) as otlp, caplog.at_level(logging.INFO, logger="router"):
        main = make_main({**env, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url})
        answer = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(20_000))
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(
                r.getMessage() == "wake checked" for r in caplog.records):
            time.sleep(0.02)
        spans = receiver.wait_for(3, 10)
    assert answer["headers"]["x-chat-fallback"] == "space_sleeping"
    wake = next(r for r in caplog.records if r.getMessage() == "wake checked")
    request = next(r for r in caplog.records if r.getMessage() == "request")
    assert wake.fields["request_id"] == answer["headers"]["x-request-id"]
    assert wake.fields["trace_id"] == _server_span(spans).trace_id
    assert request.fields["trace_id"] == _server_span(spans).trace_id


RUN = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ask_main", "packages/chat/ask/__main__.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
class Ctx:
    def get_remaining_time_in_millis(self):
        return 20000
for event in json.loads(sys.argv[1]):
    module.main(event, Ctx())
"""
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def test_every_log_line_is_typed_and_timed(worker: FakeBackend, space: FakeBackend):
    """GIVEN the function in a fresh interpreter, logging as on DigitalOcean WHEN it answers a
    chat from the worker and an `llm` chat that the sleeping Space sends to the worker, then
    refuses a bad body THEN every stderr line is a JSON object with an RFC 3339 UTC `time`;
    `attempts` is a JSON number, so a filter like `jq 'select(.attempts > 1)'` picks the
    failed-over request alone (a string would compare greater than any number in jq)."""
    space.mode = "sleeping"
    events = [load_event("chat_completions"), load_event("chat_completions_llm"),
              with_body("chat_completions", {"messages": "not a list"})]
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "SPACE_URL": space.url,
                "SPACE_TOKEN": "space-token-for-logs", "LOG_LEVEL": "INFO"})
    ran = subprocess.run([sys.executable, "-c", RUN, json.dumps(events)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    lines = [json.loads(line) for line in ran.stderr.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("msg") == "request"]
    assert [line["status"] for line in requests] == [200, 200, 400]
    for line in lines:
        assert RFC3339_UTC.fullmatch(line.get("time", "")), line
        assert abs(time.time() - _epoch(line["time"])) < 120, line
    # jq's order: null < false < true < numbers < strings; `.attempts > 1` as jq evaluates it.
    over_one = [line for line in requests if _jq_greater(line.get("attempts"), 1)]
    assert [line["fallback"] for line in over_one] == ["space_sleeping"]
    assert requests[0]["attempts"] == 1 and requests[2]["attempts"] is None


def _jq_greater(value: Any, than: int) -> bool:
    rank = {type(None): 0, bool: 1, int: 2, float: 2, str: 3, list: 4, dict: 5}
    if rank[type(value)] != rank[int]:
        return rank[type(value)] > rank[int]
    return bool(value > than)


def _epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone


def test_a_body_the_edge_cannot_read_is_logged_and_traced_with_its_id(traced, caplog):
    """GIVEN the function exporting traces WHEN an event's body is flagged base64 but does not
    decode THEN the 400 carries an `X-Request-Id`, its `request` line that id (and the trace
    id), and its SERVER span that id and status: refused at the edge like any refusal."""
    ask, receiver = traced
    event = load_event("chat_completions", body="%%% not base64 %%%", isBase64Encoded=True)
    with caplog.at_level(logging.INFO, logger="router"):
        answer = ask(event)
    spans = receiver.wait_for(1, 10)
    assert answer["statusCode"] == 400
    rid = answer["headers"]["x-request-id"]
    line = next(r.fields for r in caplog.records if r.getMessage() == "request")
    span = _server_span(spans)
    assert (line["request_id"], line["trace_id"], line["code"]) == \
        (rid, span.trace_id, "invalid_base64")
    assert span.attributes["chat.request_id"] == rid
    assert span.attributes["http.response.status_code"] == 400
