"""Issue 25, item 3: what the service answers without a credential (a CORS preflight, a warm-up
ping, `/health`) never reads a body. Before, `X-Chat-Warmup: 1` and `OPTIONS` skipped the key
check, sent `100 Continue` and buffered the body: 1,000 anonymous 256 KB bodies took the
service from 57 to 384 MiB."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router_service import Service
from tests.support.raw_client import connect, head, read_until_closed, status_of
from tests.support.service import serve_main

API_KEY = "bodies-key-3a7c9e1f"


@pytest.fixture
def service(make_main: Callable[[dict[str, str]], Any], env: dict[str, str]
            ) -> Iterator[Service]:
    """The service, keys required (so none of these requests carries a credential)."""
    service = serve_main(make_main({**env, "API_KEYS": API_KEY}), namespace="bodies", port=0)
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.parametrize(("method", "path", "headers", "status"), [
    ("POST", "/v1/chat/completions", {"x-chat-warmup": "1"}, 200),
    ("OPTIONS", "/v1/chat/completions", {"origin": "https://app.example.com",
                                         "access-control-request-method": "POST"}, 204),
    ("GET", "/health", {}, 200),
], ids=["warm-up ping", "preflight", "health"])
def test_an_answer_without_a_credential_reads_no_body(
        service: Service, worker, method: str, path: str, headers: dict[str, str],
        status: int):
    """GIVEN the service requiring a key WHEN an anonymous warm-up ping, preflight or /health
    announces a 250 KB body with `Expect: 100-continue` and sends none of it THEN it is answered
    at once from its headers, with no `100 Continue` (which would invite the body), and the
    connection closes; no backend is asked."""
    with connect(service.port) as sock:
        sock.sendall(head(method, service.app.prefix + path, {
            **headers, "content-type": "application/json", "content-length": "250000",
            "expect": "100-continue"}))
        answer, closed = read_until_closed(sock, within_s=5)
    assert b"100 Continue" not in answer
    assert status_of(answer) == status, answer[:300]
    assert closed, "the connection stayed open, waiting for a body nobody will read"
    assert worker.generation_requests() == 0


def test_a_warm_up_ping_that_sends_its_body_is_answered_and_closed(service: Service):
    """GIVEN the service requiring a key WHEN an anonymous warm-up ping sends a 250 KB body
    along with its headers THEN it gets its `{"warm": true}` answer and the connection closes
    (the rest of the body is never buffered)."""
    with connect(service.port) as sock:
        sock.sendall(head("POST", service.app.prefix + "/v1/chat/completions", {
            "x-chat-warmup": "1", "content-type": "application/json",
            "content-length": "250000"}) + b"x" * 60_000)
        answer, closed = read_until_closed(sock, within_s=5)
    assert status_of(answer) == 200
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"warm": True}
    assert closed
