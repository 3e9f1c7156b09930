"""The bugs this suite found, each pinned by the smallest case that showed it.

Each was found by the fault matrix, the load test or the fuzzers, and fixed in router/ or
ai_space/; the README's reliability section lists them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from router._do_event import FunctionContext
from tests.conftest import load_event, with_body
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import WORKER_API_TOKEN, Ledger
from tests.support.service import serve_main

Main = Callable[[dict[str, Any], Any], dict[str, Any]]


def ask(main: Main, event: dict[str, Any], ledger: Ledger) -> dict[str, Any]:
    answer = main(event, FunctionContext.with_timeout(28_000))
    ledger.answer(answer["statusCode"], answer["headers"], answer["body"])
    return answer


def test_gateway_takes_a_burst_of_connections(main: Main, ledger: Ledger) -> None:
    """GIVEN the gateway WHEN 150 connections arrive at once THEN every one is answered.

    It listened with socketserver's backlog of 5: most of a burst of 200 was reset by the
    kernel (httpx.ReadError) before any handler ran."""
    gw = serve_main(main, port=0)

    async def burst(n: int) -> Counter[Any]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            async def one() -> int | str:
                try:
                    response = await client.get(gw.function_url + "/health")
                except httpx.TransportError as exc:
                    return type(exc).__name__
                ledger.answer(response.status_code, response.headers, response.content)
                return response.status_code

            return Counter(await asyncio.gather(*(one() for _ in range(n))))

    try:
        assert asyncio.run(burst(150)) == {200: 150}
    finally:
        gw.stop()


@pytest.mark.parametrize("body", [
    '{"messages": ' + "1" * 4400 + "}",
    '{"messages": [{"role": "user", "content": "hi"}], "seed": -' + "9" * 5000 + "}",
])
def test_a_huge_integer_literal_is_a_400(main: Main, ledger: Ledger, body: str) -> None:
    """GIVEN an integer literal over Python's 4300-digit limit WHEN posted THEN 400 invalid_json.

    json.loads raises a plain ValueError for it, which parse_json did not catch: `main` raised
    and the platform would have answered its own 502."""
    answer = ask(main, load_event("chat_completions", body=body), ledger)
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(("event", "body"), [
    ("chat_completions", {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("chat_completions", {"messages": [{"role": "user", "content": "hi"}], "stop": ["\udfff"]}),
    ("embeddings", {"input": ["ok", "\ud800"]}),
    ("ai_generate", {"prompt": "hi", "system_prompt": "\udc00"}),
])
def test_a_lone_surrogate_is_a_400(main: Main, worker: FakeBackend, ledger: Ledger,
                                   event: str, body: dict[str, Any]) -> None:
    """GIVEN text with an unpaired surrogate escape (valid JSON, not valid Unicode) WHEN posted
    THEN 400 invalid_json, and no backend is called.

    It passed validation and crashed `main` with UnicodeEncodeError when httpx encoded the
    backend request as UTF-8, outside the httpx error table."""
    answer = ask(main, with_body(event, body), ledger)
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["error"]["code"] == "invalid_json"
    assert worker.seen == []


@pytest.mark.parametrize("event", ["embeddings", "ai_embeddings"])
def test_embeddings_with_missing_vectors_are_not_an_answer(main: Main, worker: FakeBackend,
                                                           ledger: Ledger, event: str) -> None:
    """GIVEN a worker answering embeddings with fewer vectors than inputs WHEN asked
    THEN the documented 503 (reason `error`), not a short answer and not a crash.

    /v1/embeddings answered 200 with the inputs silently lost; /ai/embeddings raised
    IndexError out of `main`."""
    worker.mode = "empty_data"
    answer = ask(main, load_event(event), ledger)
    assert answer["statusCode"] == 503
    assert answer["headers"]["x-chat-fallback"] == "error"
    assert json.loads(answer["body"])["error"]["code"] == "no_backend"


@pytest.mark.parametrize("event", ["chat_completions", "chat_completions_stream", "ai_chat"])
def test_an_answer_over_1_mb_falls_back_streamed_or_not(main: Main, worker: FakeBackend,
                                                        ledger: Ledger, event: str) -> None:
    """GIVEN a worker whose completion is 1.1 MB WHEN asked, streamed or not
    THEN the Space answers instead (`X-Chat-Fallback: error`), never a body over the platform's
    1 MB cap, and never a 413 (which would blame the caller's request).

    The JSON answers were capped, but `stream: true` rendered the SSE body without the check
    and answered 200 with 1.1 MB, which DigitalOcean would have cut; then both answered 413."""
    worker.mode = "huge"
    answer = ask(main, load_event(event), ledger)
    assert answer["statusCode"] == 200
    assert answer["headers"]["x-chat-backend"] == "space"
    assert answer["headers"]["x-chat-fallback"] == "error"
    assert len(answer["body"]) < 1_000_000


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/models/", "/v1/chat/completions/", "/health/"])
def test_model_server_does_not_redirect_slashes(worker_server: str, ledger: Ledger,
                                                path: str) -> None:
    """GIVEN ai_space WHEN a path has a trailing slash THEN a JSON 404, not a redirect.

    Starlette answered 307 with an empty body and `Location: http://<host:port>/v1/models`:
    an undocumented status, and the server's own (internal) URL in the answer."""
    response = httpx.request("POST" if "chat" in path else "GET", worker_server + path,
                             headers={"authorization": f"Bearer {WORKER_API_TOKEN}"},
                             json={"messages": [{"role": "user", "content": "hi"}]})
    ledger.answer(response.status_code, response.headers, response.content)
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.slow
@pytest.mark.parametrize("text", ["\ud800", ["fine", "\udfff"]])
def test_model_server_embeddings_refuse_lone_surrogates(worker_server: str, ledger: Ledger,
                                                        text: Any) -> None:
    """GIVEN an embeddings input with an unpaired surrogate escape WHEN posted THEN 400.

    The tokenizer raised TypeError on it, which became a 500 internal_error."""
    response = httpx.post(worker_server + "/v1/embeddings",
                          headers={"authorization": f"Bearer {WORKER_API_TOKEN}",
                                   "content-type": "application/json"},
                          content=json.dumps({"input": text}).encode())
    ledger.answer(response.status_code, response.headers, response.content)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.slow
def test_model_server_405_says_what_is_allowed(worker_server: str, ledger: Ledger) -> None:
    """GIVEN ai_space WHEN a route is called with a method it does not serve
    THEN 405 with the JSON error and the `Allow` header RFC 9110 requires.

    The JSON error handler rebuilt Starlette's 405 without its headers (schemathesis ST204)."""
    response = httpx.request("TRACE", worker_server + "/health")
    ledger.answer(response.status_code, response.headers, response.content)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["error"]["status"] == 405


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [{"temperature": 5e-324}, {"temperature": 1e-40},
                                      {"temperature": 1e-40, "top_p": 5e-324}])
def test_model_server_survives_a_vanishing_temperature(worker_server: str, ledger: Ledger,
                                                       sampling: dict[str, float]) -> None:
    """GIVEN a valid but tiny temperature WHEN chatting THEN 200 (greedy), not a 500.

    logits / 5e-324 overflowed to inf, softmax gave NaN and torch.multinomial raised
    (schemathesis ST101)."""
    response = httpx.post(worker_server + "/v1/chat/completions",
                          headers={"authorization": f"Bearer {WORKER_API_TOKEN}"},
                          json={"messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 2, **sampling}, timeout=30)
    ledger.answer(response.status_code, response.headers, response.content)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"
