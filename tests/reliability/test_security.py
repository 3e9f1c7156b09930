"""Who gets in: tokens on the model servers, CORS on the function, the warmup function's
exposure, and size limits. (No secret in any answer or log line: the package's `ledger`.)"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router._do_event import FunctionContext
from router._warmup import WarmupFunction
from tests.conftest import load_event
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import SPACE_API_TOKEN, WORKER_API_TOKEN, Ledger, Results
from tests.support.service import serve_main

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "https://app.example.com"
Main = Callable[[dict[str, Any], Any], dict[str, Any]]


def almost(token: str) -> list[str | None]:
    """Missing, wrong, and almost-right variants of a token."""
    return [None, "wrong", token[:-1], token[:-1] + chr(ord(token[-1]) ^ 1), token + "0",
            token.upper(), " " + token[1:], token[:8]]


def ask(main: Main, event: dict[str, Any], ledger: Ledger) -> dict[str, Any]:
    answer = main(event, FunctionContext.with_timeout(28_000))
    ledger.answer(answer["statusCode"], answer["headers"], answer["body"])
    return answer


@pytest.mark.slow
@pytest.mark.parametrize(("role", "token", "other"), [
    ("worker", WORKER_API_TOKEN, SPACE_API_TOKEN), ("space", SPACE_API_TOKEN, WORKER_API_TOKEN)])
def test_model_servers_reject_missing_wrong_and_almost_right_tokens(
        role: str, token: str, other: str, worker_server: str, space_server: str,
        ledger: Ledger, results: Results) -> None:
    """GIVEN the worker's and the Space's ai_space, each with its own token WHEN a protected
    route is called with no, a wrong, an almost-right, the other server's, or a misplaced token
    THEN 401 every time (and the right token gets through; /health needs none)."""
    url = worker_server if role == "worker" else space_server
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    refused = 0
    for path, method in (("/v1/models", "GET"), ("/v1/chat/completions", "POST"),
                         ("/v1/embeddings", "POST"), ("/nope", "GET")):
        tries: list[dict[str, str]] = [{} if t is None else {"authorization": f"Bearer {t}"}
                                       for t in almost(token)]
        tries += [{"authorization": "Bearer"}, {"authorization": f"Bearer {other}"},
                  {"authorization": f"Basic {token}"},
                  {"authorization": token}, {"x-api-key": token},
                  {"x-hf-authorization": f"Bearer {token}"}]
        for headers in tries:
            response = httpx.request(method, url + path, headers=headers, json=chat)
            ledger.answer(response.status_code, response.headers, response.content)
            assert response.status_code == 401, (path, headers, response.status_code)
            assert response.json()["error"]["code"] == "invalid_api_key"
            refused += 1
        query = httpx.request(method, url + path, params={"api_key": token}, json=chat)
        assert query.status_code == 401
    ok = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    results.bump("security", "bad_tokens_refused", refused)


@pytest.mark.slow
def test_router_over_real_model_servers_and_a_wrong_space_token(
        make_main: Callable[[dict[str, str]], Main], worker_server: str, space_server: str,
        ledger: Ledger) -> None:
    """GIVEN the router in front of the two real ai_space servers WHEN its Space token is
    almost right THEN the Space refuses it, the worker answers (`error`), nothing leaks."""
    env = {"WORKER_URL": worker_server, "WORKER_TOKEN": WORKER_API_TOKEN,
           "SPACE_URL": space_server, "SPACE_TOKEN": SPACE_API_TOKEN, "WORKER_MODEL": "tiny",
           "SPACE_MODEL": "tiny-space", "MODEL_ALIASES": "tiny-space=llm",
           "ROUTER_DEADLINE_MS": "5000", "FALLBACK_RESERVE_MS": "2500"}
    good = ask(make_main(env), load_event("chat_completions_llm"), ledger)
    assert good["statusCode"] == 200 and good["headers"]["x-chat-backend"] == "space"
    bad = ask(make_main({**env, "SPACE_TOKEN": SPACE_API_TOKEN[:-1]}),
              load_event("chat_completions_llm"), ledger)
    assert bad["statusCode"] == 200
    assert bad["headers"]["x-chat-backend"] == "worker"
    assert bad["headers"]["x-chat-fallback"] == "error"


@pytest.mark.slow
def test_model_servers_grant_no_cors(worker_server: str, ledger: Ledger) -> None:
    """GIVEN ai_space WHEN a browser origin calls or preflights THEN no CORS grant at all
    (browsers go through the function, never straight to a backend)."""
    for method in ("OPTIONS", "GET"):
        response = httpx.request(method, worker_server + "/v1/models", headers={
            "origin": ORIGIN, "access-control-request-method": "POST",
            "authorization": f"Bearer {WORKER_API_TOKEN}"})
        ledger.answer(response.status_code, response.headers, response.content)
        assert not any(h.startswith("access-control-") for h in response.headers)


@pytest.mark.parametrize(("origin", "granted"), [
    (ORIGIN, True), (ORIGIN + "/", True), ("https://evil.example", False),
    (ORIGIN + ".evil.example", False), ("http://app.example.com", False),
    ("https://app.example.com:8443", False), ("https://sub.app.example.com", False),
    ("null", False), ("https://APP.example.com", False), (ORIGIN + " ", False),
])
def test_cors_only_for_the_configured_origins(main: Main, worker: FakeBackend, ledger: Ledger,
                                              results: Results, origin: str,
                                              granted: bool) -> None:
    """GIVEN CORS_ORIGINS=https://app.example.com WHEN a preflight and a request come from
    `origin` THEN grants only for that origin; others get 403, no grant, no backend call."""
    pre = load_event("options_preflight")
    pre["http"]["headers"]["origin"] = origin
    preflight = ask(main, pre, ledger)
    answer = ask(main, load_event("chat_completions", headers={"origin": origin}), ledger)
    for response in (preflight, answer):
        assert ("access-control-allow-origin" in response["headers"]) is granted
        if granted:
            assert response["headers"]["access-control-allow-origin"] == origin
            assert response["headers"].get("access-control-allow-credentials") is None
    assert preflight["statusCode"] == (204 if granted else 403)
    assert answer["statusCode"] == (200 if granted else 403)
    assert worker.generation_requests() == (1 if granted else 0)
    results.bump("security", "cors_origins_checked")


def test_the_warmup_function_is_not_web_exposed(make_main: Callable[[dict[str, str]], Main],
                                                env: dict[str, str], hub: Any,
                                                ledger: Ledger) -> None:
    """GIVEN project.yml WHEN read THEN `warmup` is `web: false` with no web annotations, while
    `ask` is the only web function; the gateway serves no URL for it; and a web-shaped event
    handed to it directly gets a report with no secret, never a web answer."""
    project = yaml.safe_load((ROOT / "project.yml").read_text())
    functions = {f["name"]: f for p in project["packages"] for f in p["functions"]}
    assert functions["warmup"]["web"] is False
    assert "webSecure" not in functions["warmup"]
    assert not (functions["warmup"].get("annotations") or {}).get("web-export")
    assert [name for name, f in functions.items() if f.get("web") not in (False, None)] == ["ask"]

    gw = serve_main(make_main(env), namespace="sec", port=0)
    try:
        for path in ("/api/v1/web/sec/chat/warmup", "/api/v1/web/sec/chat/warmup/",
                     "/api/v1/web/sec/chat/ask/../warmup"):
            response = httpx.post(f"http://127.0.0.1:{gw.port}{path}", json={})
            ledger.answer(response.status_code, response.headers, response.content)
            assert response.status_code == 404, path
    finally:
        gw.stop()

    warmup = WarmupFunction(env={**env, "SPACE_ID": "", "HF_TOKEN": ""})
    try:
        report = warmup(load_event("chat_completions"), None)
    finally:
        warmup.close()
    ledger.answer(200, {}, json.dumps(report))
    assert "statusCode" not in report and "body" not in report


def test_request_size_limits(make_main: Callable[[dict[str, str]], Main], env: dict[str, str],
                             worker: FakeBackend, ledger: Ledger, results: Results) -> None:
    """GIVEN MAX_BODY_BYTES=65536 WHEN bodies just under and over it arrive, plain or base64,
    or over 1 MB through the gateway THEN under: served; over: 413, no backend call."""
    main = make_main({**env, "MAX_BODY_BYTES": "65536"})

    def body_of(size: int) -> str:
        # Padded with JSON's own whitespace, so only the size matters (`user` is bounded now).
        text = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        return text + " " * (size - len(text))

    assert ask(main, load_event("chat_completions", body=body_of(65_536)), ledger)[
        "statusCode"] == 200
    for body, flag in ((body_of(65_537), False),
                       (base64.b64encode(body_of(65_537).encode()).decode(), True)):
        answer = ask(main, load_event("chat_completions", body=body, isBase64Encoded=flag), ledger)
        assert answer["statusCode"] == 413
        assert json.loads(answer["body"])["error"]["code"] == "payload_too_large"
    assert worker.generation_requests() == 1

    gw = serve_main(main, port=0)
    try:
        response = httpx.post(gw.function_url + "/v1/chat/completions",
                              content=b"x" * 1_048_577,
                              headers={"content-type": "application/json"})
        ledger.answer(response.status_code, response.headers, response.content)
        assert response.status_code == 413
    finally:
        gw.stop()
    results.add("security", "size_limits", "413 over MAX_BODY_BYTES (plain, base64), "
                "over 1 MB at the gateway; over 1 MB answers fall back, or 502 (streamed or not)")


@pytest.mark.slow
def test_model_server_request_size_limit(worker_server: str, ledger: Ledger) -> None:
    """GIVEN ai_space with MAX_BODY_BYTES=64000 WHEN a bigger body comes, declared or chunked
    THEN 413 request_too_large."""
    headers = {"authorization": f"Bearer {WORKER_API_TOKEN}", "content-type": "application/json"}

    def chunks() -> Any:
        for _ in range(70):
            yield b"x" * 1000

    for content in (b"x" * 64_001, chunks()):
        response = httpx.post(worker_server + "/v1/chat/completions", headers=headers,
                              content=content)
        ledger.answer(response.status_code, response.headers, response.content)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
