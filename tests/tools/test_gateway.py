"""The local gateway serves the real `main` on DigitalOcean's URL shape, for the openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from router_service import Service
from router_tools.gateway import build_event, function_limits
from tests.fakes.openai_backend import FakeBackend
from tests.support.service import serve_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway(make_main, env: dict[str, str]) -> Iterator[Service]:
    main = make_main(env)  # the real entry; make_main closes its clients at teardown
    gw = serve_main(main, namespace="fn-test", timeout_ms=function_limits()["timeout"], port=0)
    yield gw
    gw.stop()


@pytest.fixture
def api(gateway: Service) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.function_url}/v1", api_key="unused",
                       max_retries=0, timeout=20) as client:
        yield client


def test_function_url_has_digitalocean_shape(gateway: Service):
    """GIVEN a gateway for namespace fn-test THEN its URL is .../api/v1/web/fn-test/chat/ask."""
    assert gateway.function_url == f"http://127.0.0.1:{gateway.port}/api/v1/web/fn-test/chat/ask"


def test_openai_client_chat_stream_and_embeddings(api: openai.OpenAI, worker: FakeBackend):
    """GIVEN the gateway WHEN the real openai client chats, streams and embeds THEN all work."""
    raw = api.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hello"}])
    assert raw.headers["x-chat-backend"] == "worker"
    completion = raw.parse()
    assert completion.choices[0].message.content == "worker: hello"
    assert completion.usage is not None and completion.usage.total_tokens == 5

    stream = api.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "stream me"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "space: stream me"

    embeddings = api.embeddings.create(model="small", input=["a", "b", "c"])
    assert len(embeddings.data) == 3 and len(embeddings.data[0].embedding) == 8

    models = {m.id for m in api.models.list()}
    assert {"auto", "small", "llm"} <= models


def test_openai_client_sees_documented_errors(api: openai.OpenAI, worker: FakeBackend,
                                              space: FakeBackend):
    """GIVEN both backends down WHEN the openai client chats THEN it raises a 503 error whose
    body is our JSON error."""
    worker.mode = "status:500"
    space.mode = "status:500"
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"]


def test_gateway_limits_and_unknown_paths(gateway: Service):
    """GIVEN the gateway WHEN a body over 1 MB or an unknown path arrives THEN 413 / 404 JSON."""
    with httpx.Client(timeout=10) as http:
        big = http.post(f"{gateway.function_url}/v1/chat/completions", content=b"x" * 1_100_000,
                        headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
        lost = http.get(f"http://127.0.0.1:{gateway.port}/api/v1/web/other/chat/ask/health")
        assert lost.status_code == 404


def test_same_origin_page_is_not_refused_by_cors(gateway: Service, worker: FakeBackend):
    """GIVEN the chat page served by the gateway itself WHEN it POSTs with its own Origin
    THEN CORS does not apply (same origin); a foreign Origin is still refused."""
    own = f"http://127.0.0.1:{gateway.port}"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10) as http:
        ok = http.post(f"{gateway.function_url}/v1/chat/completions", json=body,
                       headers={"origin": own})
        assert ok.status_code == 200 and ok.headers["x-chat-backend"] == "worker"
        evil = http.post(f"{gateway.function_url}/v1/chat/completions", json=body,
                         headers={"origin": "http://127.0.0.1:1"})
        assert evil.status_code == 403


def test_bad_content_length_is_a_400(gateway: Service):
    """GIVEN a raw request with a negative Content-Length WHEN sent THEN a 400 (uvicorn's HTTP
    parser refuses it before our app), and the service keeps serving."""
    import socket

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/web/fn-test/chat/ask/health HTTP/1.1\r\n"
                     b"Host: x\r\nContent-Length: -5\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after a 400
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{gateway.function_url}/health").status_code == 200


def test_gateway_timeout_comes_from_project_yml():
    """GIVEN project.yml WHEN the gateway reads the limits THEN it matches the ask function's."""
    data = yaml.safe_load((ROOT / "project.yml").read_text())
    ask = next(f for p in data["packages"] for f in p["functions"] if f["name"] == "ask")
    assert function_limits()["timeout"] == ask["limits"]["timeout"]
    assert 25_000 < ask["limits"]["timeout"] < 30_000


def test_binary_bodies_travel_base64():
    """GIVEN a non-text body WHEN the gateway builds the event THEN it is base64, flagged."""
    event = build_event("POST", "/x", {"content-type": "application/octet-stream"},
                        b"\x00\xff", "")
    assert event["http"]["isBase64Encoded"] is True and event["http"]["body"] == "AP8="
    text = build_event("POST", "/x", {"content-type": "application/json"}, b"{}", "a=1")
    assert text["http"]["body"] == "{}" and text["http"]["queryString"] == "a=1"
