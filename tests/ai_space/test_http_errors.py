"""Auth, bad input and size limits: every error is an OpenAI-style JSON answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.ai_space.conftest import TOKEN
from tests.support.loopback import LoopbackServer

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def _post(server: LoopbackServer, body: Any = None, *, content: bytes | None = None,
          token: str | None = TOKEN, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{server.url}{path}", json=body, content=content, headers=headers)


def _assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"type", "message", "code"}
    return error


@pytest.mark.parametrize("token", [
    None,
    "wrong",
    TOKEN[:-1],  # almost right: one character short
    TOKEN[:-1] + "x",  # almost right: last character differs
    TOKEN + "0",  # almost right: one character too many
    TOKEN.upper(),
])
def test_bad_tokens_get_401(tiny_server: LoopbackServer, token: str | None) -> None:
    """GIVEN a missing, wrong or almost-right token WHEN chatting THEN 401, JSON, no answer."""
    response = _post(tiny_server, CHAT, token=token)
    error = _assert_error(response, 401)
    assert error["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text


def test_wrong_scheme_gets_401(tiny_server: LoopbackServer) -> None:
    """GIVEN the right token under the Basic scheme WHEN calling THEN 401."""
    response = httpx.get(f"{tiny_server.url}/v1/models",
                         headers={"Authorization": f"Basic {TOKEN}"})
    _assert_error(response, 401)


def test_openai_client_with_wrong_key_raises_authentication_error(
        tiny_server: LoopbackServer, make_client: Callable[..., openai.OpenAI]) -> None:
    """GIVEN the openai client with a wrong key WHEN listing models THEN AuthenticationError."""
    client = make_client(tiny_server.url, api_key="nope")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_health_needs_no_token(tiny_server: LoopbackServer) -> None:
    """GIVEN no token WHEN /health is read THEN 200 with status, model names, device, and the
    engine with why it was chosen."""
    response = httpx.get(f"{tiny_server.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model": "tiny-llama",
                               "embedding_model": response.json()["embedding_model"],
                               "device": "cpu", "engine": "transformers",
                               "engine_reason": "auto: the model is not a GGUF"}


def test_auth_comes_before_body_checks(tiny_server: LoopbackServer) -> None:
    """GIVEN bad JSON and no token WHEN posted THEN 401, not 400: nothing is parsed first."""
    _assert_error(_post(tiny_server, content=b"{not json", token=None), 401)


@pytest.mark.parametrize(("body", "fragment"), [
    (None, "not valid JSON"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "content"),
    ({"messages": "hello"}, "messages"),
    ([1, 2, 3], "body"),
])
def test_bad_json_or_fields_get_400(tiny_server: LoopbackServer, body: Any,
                                    fragment: str) -> None:
    """GIVEN malformed JSON or invalid fields WHEN posted THEN a 400 that names the problem."""
    content = b"{\"messages\": [" if body is None else None
    error = _assert_error(_post(tiny_server, body, content=content), 400)
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


def test_openai_client_sees_bad_request(tiny_server: LoopbackServer,
                                        make_client: Callable[..., openai.OpenAI]) -> None:
    """GIVEN the openai client WHEN it sends an invalid temperature THEN BadRequestError."""
    client = make_client(tiny_server.url)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                       temperature=3)


def test_too_large_body_gets_413(tiny_server: LoopbackServer) -> None:
    """GIVEN MAX_BODY_BYTES=64000 WHEN a 100 kB message is posted THEN 413."""
    body = {"messages": [{"role": "user", "content": "a" * 100_000}]}
    _assert_error(_post(tiny_server, body), 413)


def test_too_large_chunked_body_gets_413(tiny_server: LoopbackServer) -> None:
    """GIVEN a chunked upload without Content-Length WHEN it passes the limit THEN 413."""
    def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 5_000
    response = httpx.post(f"{tiny_server.url}/v1/chat/completions", content=chunks(),
                          headers={"Authorization": f"Bearer {TOKEN}"})
    _assert_error(response, 413)


def test_too_long_prompt_gets_400(tiny_server: LoopbackServer) -> None:
    """GIVEN a prompt longer than MAX_INPUT_TOKENS WHEN posted THEN 400 context_length_exceeded."""
    body = {"messages": [{"role": "user", "content": "hello world " * 5000}]}
    error = _assert_error(_post(tiny_server, body), 400)
    assert error["code"] == "context_length_exceeded"


def test_unknown_route_gets_404(tiny_server: LoopbackServer) -> None:
    """GIVEN a token WHEN an unknown path is called THEN a JSON 404."""
    _assert_error(_post(tiny_server, CHAT, path="/v1/completions-nope"), 404)


def test_wrong_method_gets_json_405(tiny_server: LoopbackServer) -> None:
    """GIVEN a token WHEN GET is used on the chat route THEN a JSON 405."""
    response = httpx.get(f"{tiny_server.url}/v1/chat/completions",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    _assert_error(response, 405)
