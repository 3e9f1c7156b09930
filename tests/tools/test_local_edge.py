"""The local edge: Hugging Face's edge and Hub stand-in, over real HTTP, with real clients.

The app behind it is the scriptable FakeBackend; the clients are httpx, huggingface_hub's HfApi
and the real `ask` entry, whose wake path must work against the edge as against the Hub.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from router._do_event import FunctionContext
from router_tools.local_edge import (
    PAUSED,
    RUNNING,
    SLEEPING,
    STARTING,
    EdgeConfig,
    LocalEdge,
    SpaceState,
    config_from_env,
)
from tests.conftest import HF_TOKEN, SPACE_ID, SPACE_TOKEN, WORKER_TOKEN, load_event
from tests.fakes.openai_backend import FakeBackend

HF = {"x-hf-authorization": f"Bearer {HF_TOKEN}"}
HUB = {"authorization": f"Bearer {HF_TOKEN}"}
APP = {"authorization": f"Bearer {SPACE_TOKEN}"}


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Wait for a condition with a deadline (readiness, not a fixed sleep)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        threading.Event().wait(0.02)
    return condition()


@pytest.fixture
def edge(space: FakeBackend) -> Iterator[LocalEdge]:
    """A running edge in front of the fake Space app, with no start delay."""
    served = LocalEdge(EdgeConfig(upstream=space.url, space_id=SPACE_ID, hub_token=HF_TOKEN,
                                  start_s=0.0)).start()
    try:
        yield served
    finally:
        served.stop()


def test_running_space_is_proxied_with_the_hub_token_stripped(edge: LocalEdge,
                                                              space: FakeBackend):
    """GIVEN a running Space behind the edge WHEN a caller sends the app token and the Hub token
    THEN the app answers, sees its own token, and never sees X-HF-Authorization."""
    assert wait_for(lambda: edge.state.stage == RUNNING)
    body = {"model": "llm", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{edge.url}/v1/chat/completions?x=1", json=body,
                          headers={**APP, **HF})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "space: hi"
    seen = space.seen[-1]
    assert seen.headers["authorization"] == f"Bearer {SPACE_TOKEN}"
    assert "x-hf-authorization" not in seen.headers
    head = httpx.head(f"{edge.url}/health", headers=HF)
    assert head.status_code == 200 and head.content == b""


def test_private_space_is_hidden_without_the_hub_token(edge: LocalEdge):
    """GIVEN a private Space WHEN called without X-HF-Authorization THEN 404, as the Hub does."""
    response = httpx.get(f"{edge.url}/health")
    assert response.status_code == 404


def test_sleeping_and_paused_spaces_answer_html_pages(edge: LocalEdge):
    """GIVEN a Space put to sleep, then paused WHEN its URL is called THEN HTTP 200 + HTML: the
    sleeping page (with "sleeping"), then the paused page; starting answers 503 + HTML."""
    edge.state.sleep()
    response = httpx.post(f"{edge.url}/v1/chat/completions", json={}, headers={**APP, **HF})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert b"sleeping" in response.content.lower()
    edge.state.pause()
    paused = httpx.get(f"{edge.url}/v1/models", headers=HF)
    assert paused.status_code == 200 and b"paused" in paused.content
    starting = SpaceState(start_s=60.0, probe=lambda: True)
    gated = LocalEdge(EdgeConfig(upstream="http://127.0.0.1:9", space_id=SPACE_ID,
                                 hub_token=HF_TOKEN, start_s=60.0))
    gated.state = starting
    try:
        status, headers, page = gated.space_gate(HF)  # type: ignore[misc]
    finally:
        gated.stop()
    assert status == 503 and headers["content-type"].startswith("text/html")
    assert b"sleeping" not in page.lower()


def test_hub_endpoints_speak_what_huggingface_hub_sends(edge: LocalEdge):
    """GIVEN the edge as HF_ENDPOINT WHEN HfApi reads the runtime, pauses, restarts and sets the
    sleep time THEN each call works and the stages follow: PAUSED, APP_STARTING, RUNNING."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=edge.url, token=HF_TOKEN)
    assert wait_for(lambda: api.get_space_runtime(SPACE_ID).stage == RUNNING)
    assert api.pause_space(SPACE_ID).stage == PAUSED
    assert api.restart_space(SPACE_ID).stage in (STARTING, RUNNING)
    assert wait_for(lambda: api.get_space_runtime(SPACE_ID).stage == RUNNING)
    api.set_space_sleep_time(SPACE_ID, 3600)
    assert api.get_space_runtime(SPACE_ID).raw["gcTimeout"] == 3600
    assert edge.state.restarts == 1


def test_hub_refuses_bad_tokens_and_unknown_calls(edge: LocalEdge):
    """GIVEN the Hub stand-in WHEN called with a wrong token, an unknown Space or action, or a
    bad sleeptime body THEN 401, 404, 404 and 400."""
    base = f"{edge.url}/api/spaces/{SPACE_ID}"
    assert httpx.get(f"{base}/runtime", headers={"authorization": "Bearer nope"}
                     ).status_code == 401
    assert httpx.get(f"{edge.url}/api/spaces/other/x/runtime", headers=HUB).status_code == 404
    assert httpx.post(f"{base}/explode", headers=HUB).status_code == 404
    assert httpx.get(f"{base}/restart", headers=HUB).status_code == 404
    assert httpx.post(f"{base}/sleeptime", headers=HUB, content=b"{}").status_code == 400
    state = httpx.get(f"{edge.url}/_local/state", headers=HUB).json()
    assert state["history"][0] == {"stage": STARTING, "at": 0.0, "why": "boot"}


def test_the_router_falls_back_then_wakes_the_space_through_the_edge(
        make_main: Callable[[dict[str, str]], Any], worker: FakeBackend, edge: LocalEdge):
    """GIVEN the real `ask` entry with the edge as both the Space URL and the Hub
    WHEN the Space sleeps and an `llm` request comes THEN the worker answers (space_sleeping),
    the router restarts the Space through the edge, and once it runs the Space answers."""
    main = make_main({
        "WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "SPACE_URL": edge.url,
        "SPACE_TOKEN": SPACE_TOKEN, "SPACE_ID": SPACE_ID, "HF_TOKEN": HF_TOKEN,
        "HF_ENDPOINT": edge.url, "ROUTER_DEADLINE_MS": "6000", "FALLBACK_RESERVE_MS": "3000"})
    assert wait_for(lambda: edge.state.stage == RUNNING)
    edge.state.sleep()
    asleep = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    assert asleep["headers"]["x-chat-backend"] == "worker"
    assert asleep["headers"]["x-chat-fallback"] == "space_sleeping"
    assert wait_for(lambda: edge.state.restarts == 1), "the router never asked for a wake"
    assert wait_for(lambda: edge.state.stage == RUNNING)
    served = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    assert served["headers"]["x-chat-backend"] == "space"
    assert "x-chat-fallback" not in served["headers"]
    whys = [h["why"] for h in edge.state.snapshot()["history"]]
    assert whys[-3:] == ["sleep requested", "restart", "app healthy"]


def test_app_down_behind_a_running_space_is_a_502_page(space: FakeBackend):
    """GIVEN an edge whose app is not listening WHEN it is forced to RUNNING and called
    THEN 502 with an HTML page (the router reads it as "not ready")."""
    edge = LocalEdge(EdgeConfig(upstream="http://127.0.0.1:9", space_id=SPACE_ID,
                                hub_token=HF_TOKEN, start_s=0.0)).start()
    try:
        edge.state = SpaceState(start_s=0.0, probe=lambda: True)
        response = httpx.get(f"{edge.url}/v1/models", headers=HF)
    finally:
        edge.stop()
    assert response.status_code == 502 and b"Bad Gateway" in response.content


def test_streams_are_relayed_chunk_by_chunk_and_end_with_the_caller(edge: LocalEdge,
                                                                     space: FakeBackend):
    """GIVEN a running Space whose app drips its answer a byte at a time for 30 s
    WHEN a caller streams it through the edge THEN bytes arrive as the app sends them, not at
    the end; WHEN the caller hangs up THEN the edge drops the app's stream at once."""
    assert wait_for(lambda: edge.state.stage == RUNNING)
    space.mode, space.delay_s = "drip", 30.0
    started = time.monotonic()
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json={}, headers={**APP, **HF},
                      timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            if len(received) >= 3:
                break
        first_bytes_s = time.monotonic() - started
    hung_up = time.monotonic()
    assert received.strip() == b"" and first_bytes_s < 10.0
    assert wait_for(lambda: bool(space.dropped_at)), "the app's stream outlived the caller"
    assert space.dropped_at[0] - hung_up < 5.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_start_delay_and_idle_sleep_follow_the_clock():
    """GIVEN a Space with a 3 s start and a 60 s sleep time WHEN time passes
    THEN it runs only after 3 s and a healthy app, and sleeps after 60 s without requests."""
    clock = Clock()
    healthy = {"app": False}
    state = SpaceState(start_s=3.0, probe=lambda: healthy["app"], clock=clock)
    assert state.stage == STARTING
    clock.now += 5
    assert state.stage == STARTING  # the app is not healthy yet
    healthy["app"] = True
    assert state.stage == RUNNING
    state.sleep_time_s = 60
    clock.now += 30
    state.touch()
    clock.now += 59
    assert state.stage == RUNNING
    clock.now += 1
    assert state.stage == SLEEPING
    state.restart()
    assert state.stage == STARTING
    clock.now += 3
    assert state.stage == RUNNING
    assert json.loads(json.dumps(state.snapshot()))["restarts"] == 1


def test_config_from_env_names_what_is_missing():
    """GIVEN the edge's environment WHEN a variable is missing or not a number THEN a ValueError
    naming it; a full one gives the config."""
    with pytest.raises(ValueError, match="EDGE_UPSTREAM"):
        config_from_env({})
    full = {"EDGE_UPSTREAM": "http://127.0.0.1:1", "EDGE_SPACE_ID": SPACE_ID,
            "EDGE_HUB_TOKEN": HF_TOKEN}
    with pytest.raises(ValueError, match="EDGE_START_S"):
        config_from_env({**full, "EDGE_START_S": "soon"})
    config = config_from_env({**full, "EDGE_PRIVATE": "0", "EDGE_START_S": "1.5"})
    assert config.start_s == 1.5 and config.private is False and config.port == 0


def test_bad_content_length_is_a_400(edge: LocalEdge):
    """GIVEN a raw request with a non-numeric Content-Length WHEN sent to the edge
    THEN a 400 (uvicorn's HTTP parser refuses it before the edge's app) and a closed connection,
    and the edge keeps serving."""
    import socket

    port = int(edge.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: lots\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # the edge closes the connection after a 400
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    assert httpx.get(f"{edge.url}/_local/state", headers=HUB).status_code == 200
