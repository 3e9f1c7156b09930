"""Issue 25, items 2, 4 and 7: what one connection may make the service parse and hold. A
pipelined flood is read no faster than it is answered; headers past a stated size or count get
431 before they are built; an `Upgrade: h2c` on a POST is refused cleanly, in one log line."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router_service import Service, ServiceLimits
from router_service._door import GuardedHttpTools
from tests.support.raw_client import connect, head, read_until_closed, status_of
from tests.support.service import serve_main

API_KEY = "requests-key-6b2e8d0a"
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
LIMITS = ServiceLimits(header_timeout_ms=5_000, keep_alive_timeout_ms=5_000,
                       max_header_bytes=8_192, max_header_count=20)


@pytest.fixture
def service(make_main: Callable[[dict[str, str]], Any], env: dict[str, str]
            ) -> Iterator[Service]:
    """The service, keys required, headers capped at 8 KiB and 20 fields."""
    service = serve_main(make_main({**env, "API_KEYS": API_KEY}), namespace="requests",
                         port=0, limits=LIMITS)
    try:
        yield service
    finally:
        service.stop()


def _until(condition: Callable[[], bool], within_s: float) -> bool:
    """Poll `condition` until it holds or `within_s` passes (a bound, not a pace)."""
    done = threading.Event()
    for _ in range(int(within_s / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return condition()


def _chat_request(service: Service) -> bytes:
    body = json.dumps(CHAT).encode()
    return head("POST", service.app.prefix + "/v1/chat/completions", {
        "x-api-key": API_KEY, "content-type": "application/json",
        "content-length": str(len(body))}) + body


def test_a_pipelined_flood_is_parsed_no_faster_than_it_is_answered(service: Service, worker):
    """GIVEN a chat request the worker holds, on one connection WHEN 5,000 `GET /health` are
    pipelined behind it in one write THEN, while the chat waits, at most one request waits
    parsed behind it (uvicorn alone parsed and queued every request it had read: 160,000 took
    the service from 57 to 424 MiB); and once the chat is answered, all 5,001 answers come, in
    order."""
    worker.mode, worker.delay_s = "slow", 30
    health = head("GET", service.app.prefix + "/health", {})
    with connect(service.port) as sock:
        sock.sendall(_chat_request(service) + health * 5_000)
        assert _until(lambda: worker.generation_requests() == 1, 10)
        connection = next(iter(service.server.server_state.connections))
        assert isinstance(connection, GuardedHttpTools)
        waiting = len(connection.pipeline)
        worker.release()
        answers, sock_data = 0, b""
        sock.settimeout(30)
        while answers < 5_001:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {answers} answers"
            sock_data += chunk
            answers = sock_data.count(b"HTTP/1.1 ")
    assert waiting <= 1, f"{waiting} requests parsed and queued behind the first"
    assert answers == 5_001
    first = sock_data.split(b"HTTP/1.1 ")[1]
    assert b'"choices"' in first  # the chat's answer came first
    assert worker.generation_requests() == 1


@pytest.mark.parametrize(("headers", "what"), [
    ({"x-big": "v" * 9_000}, "one 9,000-byte header"),
    ({f"x-h{i}": "v" for i in range(21)}, "21 header fields"),
    ({f"x-h{i}": "v" * 500 for i in range(18)}, "18 headers of 500 bytes (9 KB in all)"),
], ids=["one big header", "too many fields", "too many bytes in all"])
def test_headers_past_the_stated_size_or_count_get_431(service: Service, headers, what):
    """GIVEN headers capped at 8 KiB and 20 fields WHEN a client sends {what} THEN 431
    `headers_too_large` and the connection closes (uvicorn alone took a 64 MB header, and
    100,000 fields)."""
    with connect(service.port) as sock:
        sock.sendall(head("GET", service.app.prefix + "/health", headers))
        answer, closed = read_until_closed(sock, within_s=5)
    assert status_of(answer) == 431, (what, answer[:200])
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    assert closed


def test_a_huge_header_is_cut_off_before_it_is_read(service: Service):
    """GIVEN headers capped at 8 KiB WHEN a client starts a 64 MB header and keeps sending
    THEN it gets 431 and the connection closes long before the header is all sent: the service
    never builds it."""
    with connect(service.port) as sock:
        sock.sendall(b"GET " + service.app.prefix.encode() + b"/health HTTP/1.1\r\nx-big: ")
        sent = 0
        try:
            while sent < 64 << 20:
                sock.sendall(b"v" * 65_536)
                sent += 65_536
        except OSError:
            pass
        answer, _ = read_until_closed(sock, within_s=5)
    assert sent < 64 << 20, "the whole 64 MB header was taken"
    assert status_of(answer) == 431


def test_headers_within_the_limits_are_served(service: Service):
    """GIVEN headers capped at 8 KiB and 20 fields WHEN a client sends 20 fields (`host`
    included), one of 7 KB THEN the request is answered (the limits refuse only what is past
    them)."""
    headers = {f"x-h{i}": "v" for i in range(18)} | {"x-big": "v" * 7_000}
    with connect(service.port) as sock:
        sock.sendall(head("GET", service.app.prefix + "/health", headers))
        sock.settimeout(10)
        assert status_of(sock.recv(65_536)) == 200


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every WARNING (or worse) line of uvicorn and the router, while the test runs."""
    handler = _Lines()
    handler.setLevel(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "router")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_an_h2c_upgrade_on_a_post_is_refused_in_one_log_line(service: Service, worker,
                                                             log_lines: list[str]):
    """GIVEN the service WHEN a keyed chat POST asks to upgrade to h2c (curl --http2 on an
    http:// URL) and more packets follow THEN it gets 400 `upgrade_not_supported` (not a
    misleading "body is empty"), the connection closes, no backend is asked, and the service
    logs one line for the connection (before: two uvicorn warnings per packet)."""
    body = json.dumps(CHAT).encode()
    with connect(service.port) as sock:
        sock.sendall(head("POST", service.app.prefix + "/v1/chat/completions", {
            "x-api-key": API_KEY, "content-type": "application/json",
            "connection": "Upgrade, HTTP2-Settings", "upgrade": "h2c",
            "http2-settings": "AAMAAABkAAQCAAAAAAIAAAAA", "content-length": str(len(body))})
            + body)
        for _ in range(5):
            try:
                sock.sendall(b"more bytes after the upgrade\r\n")
            except OSError:
                break
        answer, closed = read_until_closed(sock, within_s=5)
    assert status_of(answer) == 400, answer[:300]
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "upgrade_not_supported"
    assert closed
    assert worker.generation_requests() == 0
    assert len(log_lines) == 1, log_lines
    assert "upgrade" in log_lines[0]


def test_an_upgrade_on_a_request_without_a_body_is_answered_and_closed(service: Service,
                                                                        log_lines):
    """GIVEN the service WHEN `GET /health` asks to upgrade to h2c THEN it is answered as
    plain HTTP/1.1 (RFC 9110 lets a server ignore Upgrade) and the connection closes after
    the answer; one log line."""
    with connect(service.port) as sock:
        sock.sendall(head("GET", service.app.prefix + "/health", {
            "connection": "Upgrade, HTTP2-Settings", "upgrade": "h2c",
            "http2-settings": "AAMAAABkAAQCAAAAAAIAAAAA"}))
        answer, closed = read_until_closed(sock, within_s=5)
    assert status_of(answer) == 200
    assert b"connection: close" in answer.lower()
    assert closed
    assert len(log_lines) == 1, log_lines
