"""Streaming fixtures: two scripted stream backends on loopback, the service in front of them,
and a raw SSE reader that shows exactly what a client receives."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from router_service import Service
from tests.fakes.stream_backend import StreamBackend
from tests.support.credentials import HF_TOKEN, SPACE_ID, SPACE_TOKEN, WORKER_TOKEN
from tests.support.loopback import LoopbackServer
from tests.support.service import serve_main

MESSAGES: list[Any] = [{"role": "user", "content": "Write a proposal."}]
ASK: dict[str, Any] = {"model": "llm", "stream": True, "messages": MESSAGES}


@contextmanager
def stream_backends(**space: Any) -> Iterator[dict[str, StreamBackend]]:
    """A Space and a worker (StreamBackend each) on loopback; `space` sets the Space's fields."""
    fakes = {"space": StreamBackend("space", **space), "worker": StreamBackend("worker")}
    servers = [LoopbackServer(fake).start() for fake in fakes.values()]
    for fake, server in zip(fakes.values(), servers, strict=True):
        fake.url = server.url
    try:
        yield fakes
    finally:
        for fake, server in zip(fakes.values(), servers, strict=True):
            fake.release()
            server.stop()


def service_env(worker_url: str, space_url: str, hub_url: str, **settings: str
                ) -> dict[str, str]:
    """The environment of a service over these backends, with `settings` on top."""
    return {"WORKER_URL": worker_url, "WORKER_TOKEN": WORKER_TOKEN, "SPACE_URL": space_url,
            "SPACE_TOKEN": SPACE_TOKEN, "SPACE_ID": SPACE_ID, "HF_TOKEN": HF_TOKEN,
            "HF_ENDPOINT": hub_url, **settings}


@contextmanager
def running_service(make_main: Callable[[dict[str, str]], Any], env: dict[str, str]
                    ) -> Iterator[Service]:
    """`python -m router_tools serve`'s service on `env`, on a free loopback port."""
    server = serve_main(make_main(env), namespace="stream", port=0)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SeenStream:
    """What a client received: status, headers, every event's data (parsed), and `[DONE]`."""

    status: int
    headers: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def text(self) -> str:
        """The content of every chunk, joined."""
        return "".join((c.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                       for c in self.events if c.get("choices"))

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The events that are chunks (not an error event)."""
        return [c for c in self.events if "error" not in c]


def read_stream(service: Service, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> SeenStream:
    """POST a chat and read the whole SSE answer as a plain HTTP client would."""
    url = f"{service.function_url}/v1/chat/completions"
    with httpx.Client(timeout=timeout_s) as client, client.stream(
            "POST", url, json=body or ASK, headers=headers or {}) as response:
        seen = SeenStream(response.status_code, dict(response.headers))
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                seen.done = True
            else:
                seen.events.append(json.loads(data))
    return seen


def health(service: Service) -> dict[str, Any]:
    """The service's `/health` body."""
    answer: dict[str, Any] = httpx.get(f"{service.function_url}/health", timeout=5).json()
    return answer
