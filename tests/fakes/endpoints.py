"""A fake Hugging Face Inference Endpoints API, and an endpoint whose proxy follows it.

It speaks what huggingface_hub 2.4.0's `HfApi` sends (`GET|PUT /v2/endpoint/{ns}/{name}`,
`POST .../pause|resume|scale-to-zero`, `GET /v2/endpoint/{ns}`) and answers the JSON
`InferenceEndpoint.from_raw` reads. The states follow Hugging Face's docs:
- a request to a scaled-to-zero endpoint starts it, but the autoscaler acts on its own cadence
  (scale-up checks run every minute: `scale_up_after_s`), and its proxy answers 503 while no
  replica serves (without `X-Scale-Up-Timeout`);
- `resume` starts a paused or scaled-to-zero endpoint (a paused one with min and max replicas
  1, as the "Pause and Resume" guide says); resuming a running one is a 400 "already running";
- `pause` sets min and max replicas to 0, and a paused endpoint does not start on a request
  (its proxy answered 502 in huggingface_hub#1605);
- raising the minimum replicas of a paused or scaled-to-zero endpoint to 1 or more starts it;
- a started endpoint is `initializing` for `start_s`, then `running`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.fakes.asgi import read_request, send_json, serve_lifespan
from tests.fakes.openai_backend import FakeBackend

CREATED = "2025-01-06T09:00:00.000Z"
# What the proxy answers in each state (the backend's own answer when running).
PROXY_MODE = {"running": "ok", "paused": "status:502"}


@dataclass
class FakeEndpoint:
    """One endpoint's state, as the API keeps it."""

    namespace: str
    name: str
    url: str = ""
    state: str = "running"
    min_replica: int = 0
    max_replica: int = 2
    scale_to_zero_timeout: int | None = 15
    instance_type: str = "nvidia-a10g"
    instance_size: str = "x1"

    def raw(self) -> dict[str, Any]:
        """The API's JSON for it."""
        return {
            "name": self.name, "type": "protected", "accountId": None,
            "provider": {"vendor": "aws", "region": "us-east-1"},
            "compute": {"accelerator": "gpu", "instanceType": self.instance_type,
                        "instanceSize": self.instance_size,
                        "scaling": {"minReplica": self.min_replica,
                                    "maxReplica": self.max_replica,
                                    "scaleToZeroTimeout": self.scale_to_zero_timeout}},
            "model": {"repository": "acme/chat-model", "revision": "main",
                      "task": "text-generation", "framework": "pytorch",
                      "image": {"tgi": {"url": "ghcr.io/huggingface/text-generation-inference"}}},
            "status": {"state": self.state, "message": "", "createdAt": CREATED,
                       "updatedAt": CREATED, "createdBy": {"id": "1", "name": "acme"},
                       "updatedBy": {"id": "1", "name": "acme"},
                       "readyReplica": 1 if self.state == "running" else 0,
                       "targetReplica": max(self.min_replica, 1 if self.state in (
                           "running", "initializing") else 0),
                       "url": self.url or None},
            "healthRoute": "/health",
        }


@dataclass
class FakeEndpointsApi:
    """The API as an ASGI app (mounted at `/v2`). `calls` and `resumes` count what came in."""

    token: str
    url: str = ""
    start_s: float = 0.3
    # How long a request to a scaled-to-zero endpoint waits for the autoscaler (None: the
    # test moves it with `scale_up`).
    scale_up_after_s: float | None = None
    endpoints: dict[tuple[str, str], FakeEndpoint] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    resumes: int = 0
    running: threading.Event = field(default_factory=threading.Event)
    listeners: list[Callable[[FakeEndpoint], None]] = field(default_factory=list)
    _timers: list[threading.Timer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, endpoint: FakeEndpoint) -> FakeEndpoint:
        """Hold `endpoint`."""
        self.endpoints[(endpoint.namespace, endpoint.name)] = endpoint
        return endpoint

    def set_state(self, endpoint: FakeEndpoint, state: str) -> None:
        """Move `endpoint` to `state`, starting the replica's start-up when it initializes."""
        with self._lock:
            endpoint.state = state
        if state == "initializing":
            self._later(self.start_s, lambda: self._started(endpoint))
        elif state == "running":
            self.running.set()
        for listener in list(self.listeners):
            listener(endpoint)

    def _started(self, endpoint: FakeEndpoint) -> None:
        if endpoint.state == "initializing":
            self.set_state(endpoint, "running")

    def _later(self, delay_s: float, action: Callable[[], None]) -> None:
        # The fake's own start-up time, not a test's synchronisation.
        timer = threading.Timer(delay_s, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def request_arrived(self, endpoint: FakeEndpoint) -> None:
        """A request reached the proxy: a scaled-to-zero endpoint will start, at the
        autoscaler's next check."""
        if endpoint.state == "scaledToZero" and self.scale_up_after_s is not None:
            self._later(self.scale_up_after_s, lambda: self.scale_up(endpoint))

    def scale_up(self, endpoint: FakeEndpoint) -> None:
        """The autoscaler's check: a scaled-to-zero endpoint that was asked for starts."""
        if endpoint.state == "scaledToZero":
            self.set_state(endpoint, "initializing")

    def release(self) -> None:
        """Cancel pending start-ups (teardown)."""
        for timer in self._timers:
            timer.cancel()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        raw, headers = await read_request(scope, receive)
        call = (scope["method"], unquote(scope["path"]))
        with self._lock:
            self.calls.append(call)
        await send_json(send, *self._route(*call, headers, raw))

    def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes
               ) -> tuple[int, Any]:
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Unauthorized"}
        parts = path.strip("/").split("/")
        if parts[:2] != ["v2", "endpoint"] or len(parts) < 3:
            return 404, {"error": "Not Found"}
        if len(parts) == 3 and method == "GET":
            return 200, {"items": [e.raw() for e in self.endpoints.values()
                                   if e.namespace == parts[2]]}
        endpoint = self.endpoints.get((parts[2], parts[3])) if len(parts) >= 4 else None
        if endpoint is None:
            return 404, {"error": "Endpoint not found"}
        action = parts[4] if len(parts) == 5 else ""
        body = json.loads(raw) if raw else None
        with self._lock:
            self.bodies.append((method, action, body))
        return self._act(endpoint, method, action, body)

    def _act(self, endpoint: FakeEndpoint, method: str, action: str, body: Any
             ) -> tuple[int, Any]:
        if method == "GET" and not action:
            return 200, endpoint.raw()
        if method == "PUT" and not action:
            self._update(endpoint, body or {})
        elif method == "POST" and action == "resume":
            with self._lock:
                self.resumes += 1
            if endpoint.state in ("running", "initializing", "pending", "updating"):
                return 400, {"error": "Bad Request: Endpoint is already running"}
            if endpoint.state == "paused":
                endpoint.min_replica = endpoint.max_replica = 1
            self.set_state(endpoint, "initializing")
        elif method == "POST" and action == "pause":
            endpoint.min_replica = endpoint.max_replica = 0
            self.set_state(endpoint, "paused")
        elif method == "POST" and action == "scale-to-zero":
            self.set_state(endpoint, "scaledToZero")
        else:
            return 404, {"error": "Not Found"}
        return 200, endpoint.raw()

    def _update(self, endpoint: FakeEndpoint, body: dict[str, Any]) -> None:
        scaling = (body.get("compute") or {}).get("scaling") or {}
        if "minReplica" in scaling:
            endpoint.min_replica = int(scaling["minReplica"])
        if "maxReplica" in scaling:
            endpoint.max_replica = int(scaling["maxReplica"])
        if endpoint.min_replica >= 1 and endpoint.state in ("paused", "scaledToZero"):
            self.set_state(endpoint, "initializing")


class EndpointProxy:
    """The endpoint's URL: Hugging Face's proxy in front of the replica (`backend`, a
    FakeBackend that answers as the model server), following the API's state."""

    def __init__(self, api: FakeEndpointsApi, endpoint: FakeEndpoint,
                 backend: FakeBackend) -> None:
        self.api = api
        self.endpoint = endpoint
        self.backend = backend
        self.url = ""
        api.listeners.append(self._follow)
        self._follow(endpoint)

    def _follow(self, endpoint: FakeEndpoint) -> None:
        if endpoint is self.endpoint:
            self.backend.mode = PROXY_MODE.get(endpoint.state, "status:503")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.api.request_arrived(self.endpoint)
        await self.backend(scope, receive, send)

    def set_state(self, state: str) -> None:
        """Move the endpoint to `state` in the API (the proxy follows)."""
        self.api.set_state(self.endpoint, state)

    def release(self) -> None:
        """Let the backend's hanging requests go (teardown)."""
        self.backend.release()
