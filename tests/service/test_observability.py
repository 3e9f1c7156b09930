"""Issue 25, items 9-11 and 13, in the service: requests refused at admission are traced; a
failed-over stream's log line and trace are joined by one id each way; embedding tokens are
counted and /health is not; `router_space_wake_seconds` times the wake, not the idle gap."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bench.common import ROOT, free_port
from router_service import Service
from tests.conftest import WORKER_TOKEN
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.otlp import OtlpReceiver
from tests.fakes.stream_backend import StreamBackend
from tests.support.loopback import LoopbackServer
from tests.support.service import serve_main, wake_threads
from tests.support.streams import read_stream, service_env

KEY = "observe-key-7d2c91f0ab"
CHAT = {"model": "llm", "stream": True, "messages": [{"role": "user", "content": "Write."}]}


@pytest.fixture
def otlp() -> Iterator[tuple[OtlpReceiver, str]]:
    """An OTLP/HTTP receiver on loopback: (receiver, its URL)."""
    receiver = OtlpReceiver()
    with LoopbackServer(receiver) as server:
        yield receiver, server.url


@pytest.fixture
def serve(make_main: Callable[[dict[str, str]], Any]) -> Iterator[Callable[..., Service]]:
    """`serve(env)`: the service over `env` on a free loopback port, stopped at the end."""
    started: list[Service] = []

    def start(env: dict[str, str]) -> Service:
        started.append(serve_main(make_main(env), namespace="observe", port=0))
        return started[-1]

    yield start
    for service in started:
        service.stop()


def _metrics(service: Service, **headers: str) -> str:
    return httpx.get(f"http://{service.host}:{service.port}/metrics", headers=headers,
                     timeout=10).text


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_refusals_at_admission_are_traced_with_their_status(serve, otlp, worker: FakeBackend):
    """GIVEN the service with API_KEYS and a quota of 1 a minute, exporting traces WHEN a chat
    comes without a key, then two with it THEN three SERVER spans are exported: 401, 200 and
    429, each with our error code (`error.type`) and the request id its answer carried, and
    each a child of the caller's `traceparent`."""
    receiver, url = otlp
    service = serve({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "API_KEYS": KEY,
                     "RATE_LIMIT_PER_MINUTE": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": url})
    body = {"messages": [{"role": "user", "content": "hi"}]}
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    answers = []
    with httpx.Client(timeout=10) as client:
        for key in ("", KEY, KEY):
            headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
            if key:
                headers["authorization"] = f"Bearer {key}"
            answers.append(client.post(service.function_url + "/v1/chat/completions",
                                       json=body, headers=headers))
    assert [a.status_code for a in answers] == [401, 200, 429]
    spans = receiver.wait_for(4, 10)  # two SERVER spans for the refusals, one + CLIENT for 200
    server = {s.attributes["chat.request_id"]: s for s in spans if s.kind == 2}
    for answer in answers:
        span = server[answer.headers["x-request-id"]]
        assert span.attributes["http.response.status_code"] == answer.status_code
        assert (span.trace_id, span.parent_span_id) == (trace_id, parent)
        if answer.status_code != 200:
            assert span.attributes["error.type"] == answer.json()["error"]["code"]


def test_a_failed_over_stream_is_one_id_in_its_log_line_and_its_trace(
        serve, otlp, hub: FakeHub, caplog):
    """GIVEN the service exporting traces, a Space that cuts its stream after 3 tokens and a
    worker that finishes it WHEN a client streams an `llm` chat THEN the request's log line
    carries the trace id of the exported SERVER span, and that span carries the log line's
    request id (the answer's `X-Request-Id`): one id leads from either to the other."""
    receiver, url = otlp
    with _streams(space_mode="cut") as fakes, caplog.at_level(logging.INFO, logger="router"):
        service = serve(service_env(fakes["worker"].url, fakes["space"].url, hub.url,
                                    OTEL_EXPORTER_OTLP_ENDPOINT=url))
        seen = read_stream(service, CHAT)
        spans = receiver.wait_for(3, 10)
        line = _poll_line(caplog, "request")
    assert seen.status == 200 and seen.done
    assert seen.events[-1]["x_chat"]["fallback"]  # failed over
    span = next(s for s in spans if s.kind == 2)
    assert line["trace_id"] == span.trace_id
    assert span.attributes["chat.request_id"] == line["request_id"] \
        == seen.headers["x-request-id"]
    assert line["fallback"] == span.attributes["chat.fallback"]


def test_a_stream_no_backend_finished_logs_both_ids(serve, otlp, hub: FakeHub, caplog):
    """GIVEN the service exporting traces, and a Space and a worker that both cut their
    streams WHEN a client streams an `llm` chat THEN the `stream failed after content` line
    carries the request id and the trace id of that request's span."""
    receiver, url = otlp
    with _streams(space_mode="cut", worker_mode="cut") as fakes, \
            caplog.at_level(logging.INFO, logger="router"):
        service = serve(service_env(fakes["worker"].url, fakes["space"].url, hub.url,
                                    OTEL_EXPORTER_OTLP_ENDPOINT=url))
        seen = read_stream(service, CHAT)
        spans = receiver.wait_for(3, 10)
        failed = _poll_line(caplog, "stream failed after content")
    assert "error" in seen.events[-1]
    span = next(s for s in spans if s.kind == 2)
    assert failed["request_id"] == seen.headers["x-request-id"]
    assert failed["trace_id"] == span.trace_id


def test_embedding_tokens_are_counted_and_health_is_not_traffic(serve, otlp,
                                                                 worker: FakeBackend):
    """GIVEN the service with metrics and traces WHEN /health is polled three times and one
    embeddings request of 2 inputs is answered THEN `router_tokens_total{direction="in"}`
    counts the worker's 2 input tokens, no request counter moved for /health, and only the
    embeddings request was traced."""
    receiver, url = otlp
    service = serve({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                     "OTEL_EXPORTER_OTLP_ENDPOINT": url})
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.get(service.function_url + "/health").status_code == 200
        embedded = client.post(service.function_url + "/v1/embeddings",
                               json={"model": "small", "input": ["one", "two"]})
    assert embedded.status_code == 200
    text = _metrics(service)
    spans = receiver.wait_for(2, 10)
    assert _sample(text, "router_tokens_total", backend="worker", direction="in") == 2.0
    counted = [line for line in text.splitlines() if line.startswith("router_requests_total{")]
    assert [float(line.rsplit(" ", 1)[1]) for line in counted] == [1.0], counted
    server = [s for s in spans if s.kind == 2]
    assert [s.attributes["gen_ai.operation.name"] for s in server] == ["embeddings"]
    assert server[0].attributes["gen_ai.usage.input_tokens"] == 2


def test_wake_seconds_time_the_wake_not_the_idle_gap_after_it(serve, hub: FakeHub,
                                                               space: FakeBackend,
                                                               worker: FakeBackend, caplog):
    """GIVEN the service in front of a sleeping Space that runs again after three runtime
    reads once restarted WHEN an `llm` chat falls back (the Space is woken), the Space stays
    idle 1.5 s after it is running, and then answers the next chat THEN
    `router_space_wake_seconds` records one wake, timed from the wake request to the Hub's
    RUNNING, well under the idle gap that followed it; the wake line names the request."""
    space.mode = "sleeping"
    hub.running_after_polls = 3
    env = service_env(worker.url, space.url, hub.url, WAKE_POLL_MS="50")
    with caplog.at_level(logging.INFO, logger="router"):
        service = serve(env)
        with httpx.Client(timeout=10) as client:
            first = client.post(service.function_url + "/v1/chat/completions",
                                json={**CHAT, "stream": False})
            assert first.headers["x-chat-fallback"] == "space_sleeping"
            end = time.monotonic() + 10
            while time.monotonic() < end and hub.stage != "RUNNING":
                time.sleep(0.02)
            space.mode = "ok"
            idle_until = time.monotonic() + 1.5
            while time.monotonic() < idle_until:  # the idle gap the old metric counted
                time.sleep(0.1)
            second = client.post(service.function_url + "/v1/chat/completions",
                                 json={**CHAT, "stream": False})
        text = _metrics(service)
        wake = _poll_line(caplog, "wake checked")
    assert second.headers["x-chat-backend"] == "space"
    assert _sample(text, "router_space_wake_seconds_count", backend="space") == 1.0
    assert _sample(text, "router_space_wake_seconds_sum", backend="space") < 1.0
    assert wake["request_id"] == first.headers["x-request-id"]


def test_a_space_that_sleeps_again_is_watched_by_one_thread(serve, hub: FakeHub,
                                                            space: FakeBackend,
                                                            worker: FakeBackend) -> None:
    """GIVEN the service in front of a sleeping Space that never reaches RUNNING, and no wake
    cool-down WHEN it is woken, falls asleep again and is woken again THEN both wakes restart
    it, but one thread watches it: a watch runs until RUNNING (or 30 minutes), so one per wake
    would pile up on a Space that keeps falling asleep."""
    space.mode = "sleeping"
    env = service_env(worker.url, space.url, hub.url, WAKE_POLL_MS="50", WAKE_COOLDOWN_S="0")
    service = serve(env)
    with httpx.Client(timeout=10) as client:
        for restarts in (1, 2):
            client.post(service.function_url + "/v1/chat/completions",
                        json={**CHAT, "stream": False})
            end = time.monotonic() + 10
            while hub.restarts < restarts:
                assert time.monotonic() < end, "the Space was not restarted"
                time.sleep(0.02)
            hub.set_stage("SLEEPING")
    end = time.monotonic() + 5
    while len(wake_threads()) > 1 and time.monotonic() < end:
        time.sleep(0.02)
    assert len(wake_threads()) == 1, wake_threads()


def _poll_line(caplog: pytest.LogCaptureFixture, message: str) -> dict[str, Any]:
    """The fields of the first log record with `message`, waiting for it up to 10 s."""
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for record in list(caplog.records):
            if record.getMessage() == message:
                return dict(record.fields)  # type: ignore[attr-defined]
        time.sleep(0.02)
    raise AssertionError(f"no {message!r} line")


class _streams:
    """A Space and a worker that stream (tests/fakes/stream_backend.py), with their modes."""

    def __init__(self, space_mode: str = "ok", worker_mode: str = "ok") -> None:
        self.fakes = {"space": StreamBackend("space", mode=space_mode, after=3),
                      "worker": StreamBackend("worker", mode=worker_mode, after=3)}
        self.servers = [LoopbackServer(fake) for fake in self.fakes.values()]

    def __enter__(self) -> dict[str, StreamBackend]:
        for fake, server in zip(self.fakes.values(), self.servers, strict=True):
            fake.url = server.start().url
        return self.fakes

    def __exit__(self, *exc: object) -> None:
        for fake, server in zip(self.fakes.values(), self.servers, strict=True):
            fake.release()
            server.stop()


def test_a_body_over_the_cap_is_traced_and_logged_with_its_id(serve, otlp, worker: FakeBackend,
                                                              caplog):
    """GIVEN the service with MAX_BODY_BYTES 2000, exporting traces WHEN one chat announces a
    larger Content-Length and another sends a larger chunked body THEN both get 413, and each
    is one SERVER span with status 413 and a `request` log line, joined by the answer's
    `X-Request-Id` and the trace id, like any other refusal."""
    receiver, url = otlp
    with caplog.at_level(logging.INFO, logger="router"):
        service = serve({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                         "MAX_BODY_BYTES": "2000", "OTEL_EXPORTER_OTLP_ENDPOINT": url})
        big = b'{"messages": [{"role": "user", "content": "' + b"x" * 4000 + b'"}]}'
        with httpx.Client(timeout=10) as client:
            declared = client.post(service.function_url + "/v1/chat/completions", content=big,
                                   headers={"content-type": "application/json"})
            chunked = client.post(service.function_url + "/v1/chat/completions",
                                  content=iter([big[:1500], big[1500:]]),
                                  headers={"content-type": "application/json"})
        spans = receiver.wait_for(2, 10)
        lines = {}
        for answer in (declared, chunked):
            rid = answer.headers.get("x-request-id", "")
            end = time.monotonic() + 10
            while rid not in lines and time.monotonic() < end:
                lines.update({r.fields.get("request_id"): r.fields for r in list(caplog.records)
                              if r.getMessage() == "request"})
                time.sleep(0.02)
    assert (declared.status_code, chunked.status_code) == (413, 413)
    server = {s.attributes["chat.request_id"]: s for s in spans if s.kind == 2}
    for answer in (declared, chunked):
        rid = answer.headers["x-request-id"]
        assert server[rid].attributes["http.response.status_code"] == 413
        assert lines[rid]["trace_id"] == server[rid].trace_id
        assert lines[rid]["code"] == "payload_too_large"


def test_every_line_the_service_writes_is_json_with_its_time(worker: FakeBackend):
    """GIVEN `python -m router_service` as deployed WHEN it starts, answers a chat, gets a
    request line uvicorn cannot parse, and is stopped THEN every line it wrote to stderr (its
    start-up line and uvicorn's own included) is one JSON object with an RFC 3339 UTC `time`,
    so a log pipeline reads the service as it reads the function."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "LOG_LEVEL": "INFO"})
    server = subprocess.Popen([sys.executable, "-m", "router_service", "--port", str(port),
                               "--env-file", ""], cwd=ROOT, env=env, text=True,
                              stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}/api/v1/web/local/chat/ask"
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        chat = httpx.post(base + "/v1/chat/completions", timeout=10,
                          json={"messages": [{"role": "user", "content": "hi"}]})
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            raw.recv(1024)
    finally:
        server.send_signal(signal.SIGTERM)  # as App Platform stops it
        _, err = server.communicate(timeout=60)
    assert chat.status_code == 200
    lines = [line for line in err.splitlines() if line.strip()]
    assert any('"msg": "request"' in line for line in lines), err[-2000:]
    for line in lines:
        record = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), line
