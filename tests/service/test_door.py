"""The service's door against hostile clients (router_service/_door.py), on a real server on
loopback: a time limit on every phase of a request, and a fair share of the connection cap."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from router_service import Service, ServiceLimits
from tests.support.raw_client import connect, drip, head, read_until_closed, status_of
from tests.support.service import serve_main

API_KEY = "door-key-5e1f0a9b"
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
# Short limits, so each case is over in well under a second on a good server.
FAST = ServiceLimits(header_timeout_ms=300, body_min_bytes_per_s=1_000,
                     keep_alive_timeout_ms=300, max_connections=50,
                     max_connections_per_address=3)


@pytest.fixture
def service(make_main: Callable[[dict[str, str]], Any], env: dict[str, str]
            ) -> Iterator[Service]:
    """The service, keys required, with the short limits above."""
    service = serve_main(make_main({**env, "API_KEYS": API_KEY}), namespace="door", port=0,
                         limits=FAST)
    try:
        yield service
    finally:
        service.stop()


def _chat_path(service: Service) -> str:
    return service.app.prefix + "/v1/chat/completions"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(service: Service):
    """GIVEN a 300 ms header timeout WHEN a client connects and sends nothing THEN the service
    answers 408 and closes the connection (uvicorn alone would hold it for ever)."""
    with connect(service.port) as sock:
        answer, closed = read_until_closed(sock, within_s=5)
    assert closed, "an idle connection that never sent a request was held open"
    assert status_of(answer) == 408
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert service.door.timed_out == 1


def test_half_sent_headers_are_cut_off(service: Service):
    """GIVEN a 300 ms header timeout WHEN a client sends half its headers and stops THEN 408,
    and the connection closes."""
    with connect(service.port) as sock:
        sock.sendall(head("POST", _chat_path(service), {"x-api-key": API_KEY})[:-10])
        answer, closed = read_until_closed(sock, within_s=5)
    assert closed and status_of(answer) == 408


def test_a_dripping_body_is_cut_off_and_never_reaches_a_backend(service: Service, worker):
    """GIVEN a body rate of at least 1,000 B/s after a 300 ms grace WHEN an authenticated client
    sends a 60-byte body one byte each 100 ms THEN 408 and a closed connection before it is
    done, and no backend saw a request."""
    body = json.dumps(CHAT).encode()[:60]
    with connect(service.port) as sock:
        sock.sendall(head("POST", _chat_path(service), {
            "x-api-key": API_KEY, "content-type": "application/json",
            "content-length": str(len(body))}))
        answer, sent = drip(sock, body, every_s=0.1)
        _, closed = read_until_closed(sock, within_s=2)
    assert status_of(answer) == 408, answer[:200]
    assert sent < len(body) and closed
    assert worker.generation_requests() == 0


def test_one_address_cannot_hold_every_connection(service: Service):
    """GIVEN a share of 3 connections per address group WHEN 127.1.0.2 holds 3 and opens a 4th
    THEN the 4th gets 503 `too_many_connections` and is closed at once, while a client on
    127.0.0.1 (another /24) is still served."""
    held = [connect(service.port, source="127.1.0.2") for _ in range(3)]
    try:
        with connect(service.port, source="127.1.0.2") as extra:
            answer, closed = read_until_closed(extra, within_s=2)
        assert closed and status_of(answer) == 503
        assert b"too_many_connections" in answer
        with httpx.Client(timeout=10) as client:
            ok = client.get(service.function_url + "/health")
        assert ok.status_code == 200
        assert service.door.refused == 1
    finally:
        for sock in held:
            sock.close()


def test_an_idle_kept_alive_connection_closes_after_the_keep_alive_timeout(service: Service):
    """GIVEN a 300 ms keep-alive timeout WHEN a client gets an answer and then sends nothing
    THEN the connection closes, with no second answer."""
    with connect(service.port) as sock:
        sock.sendall(head("GET", service.app.prefix + "/health", {}))
        answer, closed = read_until_closed(sock, within_s=5)
    assert closed and status_of(answer) == 200
    assert answer.count(b"HTTP/1.1 ") == 1


def test_blank_lines_do_not_keep_an_idle_connection_alive(service: Service):
    """GIVEN a 300 ms keep-alive and header timeout WHEN a client gets an answer and then
    sends a bare CRLF every 100 ms (allowed between requests, and no request) THEN the
    connection still closes (before: every byte cancelled the keep-alive timer, and no header
    timer ran until a request began: a socket held for ever at 20 bytes a second)."""
    with connect(service.port) as sock:
        sock.sendall(head("GET", service.app.prefix + "/health", {}))
        sock.settimeout(5)
        assert status_of(sock.recv(65_536)) == 200
        closed = False
        for _ in range(50):  # 5 s of blank lines at most
            try:
                sock.sendall(b"\r\n")
            except OSError:
                closed = True
                break
            _, closed = read_until_closed(sock, within_s=0.1)
            if closed:
                break
    assert closed, "blank lines kept an idle connection open"
