"""The credential before the body, and MAX_BODY_BYTES, in the service (router_service/_app.py),
on a real server on loopback with the real `ask` entry and fake backends."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from router_service import Service
from tests.support.raw_client import connect, head, read_until_closed, status_of
from tests.support.service import serve_main

API_KEY = "gate-key-8c2d4e6f"
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def service(make_main: Callable[[dict[str, str]], Any], env: dict[str, str]
            ) -> Iterator[Service]:
    """The service with keys required, one request a minute each, and a 64 KiB body cap."""
    main = make_main({**env, "API_KEYS": API_KEY, "RATE_LIMIT_PER_MINUTE": "1",
                      "MAX_BODY_BYTES": "65536"})
    service = serve_main(main, namespace="gate", port=0)
    try:
        yield service
    finally:
        service.stop()


def _announce_body(service: Service, headers: dict[str, str]) -> tuple[bytes, bool]:
    """Send only the headers of a 60,000-byte POST, never its body; what came back."""
    with connect(service.port) as sock:
        sock.sendall(head("POST", service.app.prefix + "/v1/chat/completions", {
            "content-type": "application/json", "content-length": "60000", **headers}))
        return read_until_closed(sock, within_s=5)


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "invalid_api_key"),
    ({"x-api-key": "gate-key-8c2d4e6X"}, 401, "invalid_api_key"),
    ({"x-api-key": API_KEY, "origin": "https://evil.example"}, 403, "origin_not_allowed"),
])
def test_a_request_refused_on_its_headers_is_answered_before_its_body(
        service: Service, worker, headers: dict[str, str], status: int, code: str):
    """GIVEN the service requiring a key WHEN a client announces a 60 KB body with no valid
    credential (or from a foreign origin) and sends none of it THEN it gets its 401/403 at
    once and the connection closes: no byte of the body was waited for or buffered."""
    answer, closed = _announce_body(service, headers)
    assert status_of(answer) == status, answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == code
    assert closed
    assert worker.generation_requests() == 0


def test_the_quota_is_taken_before_the_body(service: Service, worker):
    """GIVEN RATE_LIMIT_PER_MINUTE=1 WHEN a key's second request announces a body and sends
    none of it THEN 429 with Retry-After at once, and the connection closes."""
    with httpx.Client(timeout=10) as client:
        first = client.post(service.function_url + "/v1/chat/completions", json=CHAT,
                            headers={"x-api-key": API_KEY})
    assert first.status_code == 200
    answer, closed = _announce_body(service, {"x-api-key": API_KEY})
    assert status_of(answer) == 429 and b"retry-after:" in answer.lower()
    assert closed
    assert worker.generation_requests() == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_max_body_bytes_is_refused_and_reaches_no_backend(
        service: Service, worker, chunked: bool):
    """GIVEN MAX_BODY_BYTES=65536 WHEN an authenticated client sends a 100 KB chat body, with a
    Content-Length or chunked THEN 413 `payload_too_large`, as the function answers, and no
    backend sees it."""
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}
    data = json.dumps(big).encode()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 16_384):
            yield data[start:start + 16_384]

    with httpx.Client(timeout=10) as client:
        answer = client.post(service.function_url + "/v1/chat/completions",
                             content=pieces() if chunked else data,
                             headers={"x-api-key": API_KEY,
                                      "content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert worker.generation_requests() == 0


def test_a_body_within_max_body_bytes_is_served(service: Service, worker):
    """GIVEN MAX_BODY_BYTES=65536 WHEN an authenticated client sends a 30 KB chat body THEN the
    worker answers it (the cap refuses only what is over it)."""
    body = {**CHAT, "messages": [{"role": "user", "content": "y" * 30_000}]}
    with httpx.Client(timeout=10) as client:
        answer = client.post(service.function_url + "/v1/chat/completions", json=body,
                             headers={"x-api-key": API_KEY})
    assert answer.status_code == 200, answer.text
    assert worker.generation_requests() == 1
