"""Fixtures shared by the router suites: fakes on loopback and the real `ask` entry."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from router._retry import set_backoff
from router_tools.gateway import load_entry
from tests.fakes.endpoints import EndpointProxy, FakeEndpoint, FakeEndpointsApi
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.stream_backend import StreamBackend
from tests.support.credentials import HF_TOKEN as HF_TOKEN
from tests.support.credentials import SECRETS as SECRETS
from tests.support.credentials import SPACE_ID as SPACE_ID
from tests.support.credentials import SPACE_TOKEN as SPACE_TOKEN
from tests.support.credentials import WORKER_TOKEN as WORKER_TOKEN
from tests.support.loopback import LoopbackServer
from tests.support.redis_server import RedisServer
from tests.support.streams import stream_backends

EVENTS = Path(__file__).parent / "events"
ENDPOINT_ID = "acme/chat-ep"


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    """Backoff waits cost wall time and prove nothing here; a retry test turns them on."""
    set_backoff(False)
    yield
    set_backoff(True)


def _serve(app: Any) -> Iterator[tuple[Any, str]]:
    server = LoopbackServer(app).start()
    try:
        yield app, server.url
    finally:
        if hasattr(app, "release"):
            app.release()
        server.stop()


@pytest.fixture
def worker() -> Iterator[FakeBackend]:
    """A healthy worker on loopback."""
    fake = FakeBackend("worker", token=WORKER_TOKEN)
    for app, url in _serve(fake):
        app.url = url
        yield app


@pytest.fixture
def space() -> Iterator[FakeBackend]:
    """A Space (behind a fake HF edge) on loopback, healthy until told otherwise."""
    fake = FakeBackend("space", token=SPACE_TOKEN)
    for app, url in _serve(fake):
        app.url = url
        yield app


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    """A fake Hub API on loopback, whose Space starts out SLEEPING."""
    fake = FakeHub(SPACE_ID, HF_TOKEN)
    for app, url in _serve(fake):
        app.url = url
        yield app


@pytest.fixture
def endpoints_api() -> Iterator[FakeEndpointsApi]:
    """A fake Inference Endpoints API on loopback (`url` ends in /v2, as HF's does)."""
    fake = FakeEndpointsApi(HF_TOKEN)
    for app, url in _serve(fake):
        app.url = url + "/v2"
        yield app


@pytest.fixture
def endpoint(endpoints_api: FakeEndpointsApi) -> Iterator[EndpointProxy]:
    """The endpoint `acme/chat-ep` (`.endpoint`: its state in the API), running, behind a
    proxy that follows that state; the replica (`.backend`) is a FakeBackend named `ep` that
    takes HF_TOKEN, as a protected endpoint does."""
    namespace, name = ENDPOINT_ID.split("/")
    fake = endpoints_api.add(FakeEndpoint(namespace, name))
    proxy = EndpointProxy(endpoints_api, fake, FakeBackend("ep", token=HF_TOKEN))
    for _, url in _serve(proxy):
        fake.url = proxy.url = url
        yield proxy


@pytest.fixture
def backends() -> Iterator[dict[str, StreamBackend]]:
    """A Space and a worker that stream, and break their streams when told to
    (tests/fakes/stream_backend.py), on loopback."""
    with stream_backends() as fakes:
        yield fakes


@pytest.fixture
def env(worker: FakeBackend, space: FakeBackend, hub: FakeHub) -> dict[str, str]:
    """The function's environment, pointing at the fakes."""
    return {
        "WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
        "SPACE_URL": space.url, "SPACE_TOKEN": SPACE_TOKEN,
        "SPACE_ID": SPACE_ID, "HF_TOKEN": HF_TOKEN, "HF_ENDPOINT": hub.url,
        "ROUTER_DEADLINE_MS": "6000", "FALLBACK_RESERVE_MS": "3000",
        "CONNECT_TIMEOUT_MS": "1000", "CORS_ORIGINS": "https://app.example.com",
    }


Main = Callable[[dict[str, Any], Any], dict[str, Any]]


@pytest.fixture
def make_main(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, str]], Main]]:
    """Load the real `packages/chat/ask/__main__.py` afresh (a cold container) with `env`."""
    loaded: list[Main] = []

    def make(env: dict[str, str]) -> Main:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        entry = load_entry()
        loaded.append(entry)
        return entry

    yield make
    for entry in loaded:
        entry.__globals__["FUNCTION"].close()


@pytest.fixture
def main(make_main: Callable[[dict[str, str]], Main], env: dict[str, str]) -> Main:
    """The real `main`, in a cold container configured for the fakes."""
    return make_main(env)


def load_event(name: str, **http: Any) -> dict[str, Any]:
    """A stored DigitalOcean raw web event, with `http` fields overridden."""
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    event = copy.deepcopy(event)
    event["http"].update(http)
    return event


def with_body(name: str, body: dict[str, Any], **http: Any) -> dict[str, Any]:
    """A stored event with a different JSON body."""
    return load_event(name, body=json.dumps(body), **http)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A password-protected redis-server on a free loopback port (skips without the binary)."""
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()
