"""A local stand-in for Hugging Face's edge and Hub, in front of the local Space's model server.

It behaves, over real HTTP, the way DESIGN §2 records the platform: a RUNNING Space is proxied
to its app (the `Authorization` header reaches the app, `X-HF-Authorization` is checked and
stripped), a SLEEPING Space answers HTTP 200 with the sleeping page, a starting one answers 503
with an HTML page, and the Hub endpoints the router and `huggingface_hub` call (`runtime`,
`restart`, `pause`, `sleeptime`) drive the stage. A restart goes APP_STARTING, then RUNNING once
`start_s` has passed and the app's /health answers 200. `POST /_local/sleep` puts the Space to
sleep at once; it is local-only (the Hub has no such call; a real Space sleeps when idle).

Only the standard library's http.server and httpx: no torch, no fastapi.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from router_tools.gateway import (
    BAD_CONTENT_LENGTH,
    BackgroundServer,
    ThreadedServer,
    content_length,
    json_reply,
)

log = logging.getLogger("router.local_edge")

SLEEPING_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sleeping - Hugging Face</title></head><body>"
    b"<h1>This Space is sleeping due to inactivity.</h1>"
    b"<form method=\"post\"><button>Restart this Space</button></form></body></html>"
)
STARTING_PAGE = (
    b"<!DOCTYPE html><html><head><title>Starting - Hugging Face</title></head><body>"
    b"<h1>This Space is starting.</h1><p>The app is not ready yet.</p></body></html>"
)
PAUSED_PAGE = (
    b"<!DOCTYPE html><html><head><title>Paused - Hugging Face</title></head><body>"
    b"<h1>This Space has been paused by its owner.</h1></body></html>"
)
BAD_GATEWAY_PAGE = (
    b"<!DOCTYPE html><html><head><title>502</title></head><body>"
    b"<h1>502 Bad Gateway</h1></body></html>"
)

RUNNING = "RUNNING"
STARTING = "APP_STARTING"
SLEEPING = "SLEEPING"
PAUSED = "PAUSED"

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host",
                         "content-length", "x-hf-authorization"})


class SpaceState:
    """One Space's stage as the Hub reports it, and the rules that change it."""

    def __init__(self, *, start_s: float, probe: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start_s = start_s
        self.sleep_time_s: int | None = None
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._stage = STARTING
        self._since = clock()
        self._last_request = clock()
        self.restarts = 0
        self.history: list[dict[str, Any]] = [{"stage": STARTING, "at": 0.0, "why": "boot"}]
        self._born = clock()

    def _set(self, stage: str, why: str) -> None:
        if stage == self._stage:
            return
        self._stage = stage
        self._since = self._clock()
        self.history.append({"stage": stage, "at": round(self._since - self._born, 3),
                             "why": why})
        log.info("space stage %s (%s)", stage, why)

    @property
    def stage(self) -> str:
        """The current stage, after applying the start delay and the idle sleep time."""
        with self._lock:
            now = self._clock()
            since = self._since
            due = self._stage == STARTING and now - since >= self.start_s
            if (self._stage == RUNNING and self.sleep_time_s is not None
                    and self.sleep_time_s > 0 and now - self._last_request >= self.sleep_time_s):
                self._set(SLEEPING, "idle")
        # Probe the app outside the lock: it is an HTTP call.
        healthy = due and self._probe()
        with self._lock:
            if healthy and self._stage == STARTING and self._since == since:
                self._set(RUNNING, "app healthy")
            return self._stage

    def touch(self) -> None:
        """Record a request to the app (a request keeps a Space awake)."""
        with self._lock:
            self._last_request = self._clock()

    def restart(self) -> None:
        """A Hub restart: from any stage, the app starts over."""
        with self._lock:
            self.restarts += 1
            self._set(STARTING, "restart")
            self._since = self._clock()
            self._last_request = self._since

    def sleep(self) -> None:
        """Put the Space to sleep now (local control)."""
        with self._lock:
            self._set(SLEEPING, "sleep requested")

    def pause(self) -> None:
        """A Hub pause: stays paused until restarted."""
        with self._lock:
            self._set(PAUSED, "pause")

    def snapshot(self) -> dict[str, Any]:
        """Stage, history and counters, for the local state endpoint."""
        stage = self.stage
        with self._lock:
            return {"stage": stage, "restarts": self.restarts, "history": list(self.history),
                    "sleep_time_s": self.sleep_time_s}


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """How the edge is wired: the app behind it, the Space's id and the Hub token."""

    upstream: str
    space_id: str
    hub_token: str
    start_s: float = 3.0
    private: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    hardware: str = "cpu-upgrade"  # sleep time is configurable on it, as on GPU hardware


class LocalEdge(BackgroundServer):
    """A threaded HTTP server: the Space's edge and the few Hub endpoints, on one port."""

    thread_name = "local-edge"

    def __init__(self, config: EdgeConfig, *, transport: httpx.BaseTransport | None = None
                 ) -> None:
        self.config = config
        self.client = httpx.Client(
            base_url=config.upstream.rstrip("/"), trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(300.0, connect=2.0),
            transport=transport or httpx.HTTPTransport(retries=0),
        )
        self.state = SpaceState(start_s=config.start_s, probe=self._app_healthy)
        self.server = ThreadedServer((config.host, config.port), self._handler_class())
        self._hub_prefix = f"/api/spaces/{config.space_id}/"

    @property
    def url(self) -> str:
        """Base URL of the edge (the Space's URL and the Hub endpoint)."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _app_healthy(self) -> bool:
        try:
            return self.client.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _hub_authorised(self, headers: Mapping[str, str]) -> bool:
        return headers.get("authorization", "") == f"Bearer {self.config.hub_token}"

    def runtime(self) -> dict[str, Any]:
        """The Hub's runtime answer for the Space."""
        stage = self.state.stage
        return {"stage": stage,
                "hardware": {"current": self.config.hardware if stage == RUNNING else None,
                             "requested": self.config.hardware},
                "storage": None, "gcTimeout": self.state.sleep_time_s, "devMode": False}

    def hub(self, method: str, path: str, headers: Mapping[str, str], body: bytes
            ) -> tuple[int, dict[str, str], bytes]:
        """Answer a Hub API call (`/api/spaces/<id>/...`) or the local control calls."""
        if not self._hub_authorised(headers):
            return json_reply(401, {"error": "Invalid credentials in Authorization header"})
        if path == "/_local/state" and method == "GET":
            return json_reply(200, self.state.snapshot())
        if path == "/_local/sleep" and method == "POST":
            self.state.sleep()
            return json_reply(200, self.runtime())
        if not path.startswith(self._hub_prefix):
            return json_reply(404, {"error": "Repository not found"})
        action = path[len(self._hub_prefix):]
        if action == "runtime" and method == "GET":
            return json_reply(200, self.runtime())
        if method != "POST":
            return json_reply(404, {"error": "Repository not found"})
        if action == "restart":
            self.state.restart()
        elif action == "pause":
            self.state.pause()
        elif action == "sleeptime":
            try:
                seconds = int(json.loads(body or b"{}")["seconds"])
            except (ValueError, KeyError, TypeError):
                return json_reply(400, {"error": "expected {\"seconds\": <int>}"})
            self.state.sleep_time_s = seconds
        else:
            return json_reply(404, {"error": "Repository not found"})
        return json_reply(200, self.runtime())

    def space_gate(self, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes] | None:
        """What the edge answers instead of the app, or None when the app should answer."""
        if self.config.private and \
                headers.get("x-hf-authorization", "") != f"Bearer {self.config.hub_token}":
            # The Hub hides a private Space from callers without a token.
            return json_reply(404, {"error": "Repository not found"})
        stage = self.state.stage
        if stage == RUNNING:
            self.state.touch()
            return None
        if stage == SLEEPING:
            return 200, {"content-type": "text/html; charset=utf-8"}, SLEEPING_PAGE
        if stage == PAUSED:
            return 200, {"content-type": "text/html; charset=utf-8"}, PAUSED_PAGE
        return 503, {"content-type": "text/html; charset=utf-8", "retry-after": "5"}, \
            STARTING_PAGE

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        edge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = content_length(self.headers.get("content-length"))
                if length < 0:
                    self.close_connection = True
                    self._reply(*BAD_CONTENT_LENGTH)
                    return
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = unquote(urlsplit(self.path).path)
                if path.startswith(("/api/", "/_local/")):
                    self._reply(*edge.hub(self.command, path, headers, body))
                    return
                gate = edge.space_gate(headers)
                if gate is not None:
                    self._reply(*gate)
                    return
                self._proxy(headers, body)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                if self.close_connection:
                    self.send_header("connection", "close")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _proxy(self, headers: dict[str, str], body: bytes) -> None:
                forward = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
                request = edge.client.build_request(self.command, self.path, headers=forward,
                                                    content=body)
                try:
                    response = edge.client.send(request, stream=True)
                except httpx.HTTPError:
                    self._reply(502, {"content-type": "text/html"}, BAD_GATEWAY_PAGE)
                    return
                try:
                    self._relay(response)
                except (httpx.HTTPError, OSError):
                    self.close_connection = True  # the app or the caller went away mid-answer
                finally:
                    response.close()

            def _relay(self, response: httpx.Response) -> None:
                self.send_response(response.status_code)
                for name, value in response.headers.multi_items():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                if self.command == "HEAD" or response.status_code in (204, 304):
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for chunk in response.iter_bytes():
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.command, self.path.split("?")[0])

        return Handler

    def stop(self) -> None:
        """Stop serving, close the socket and the upstream client."""
        super().stop()
        self.client.close()


def config_from_env(env: Mapping[str, str]) -> EdgeConfig:
    """Read EDGE_* variables into a config; raise ValueError naming a bad one."""
    for name in ("EDGE_UPSTREAM", "EDGE_SPACE_ID", "EDGE_HUB_TOKEN"):
        if not env.get(name):
            raise ValueError(f"{name} is not set")
    try:
        start_s = float(env.get("EDGE_START_S", "3"))
        port = int(env.get("EDGE_PORT", "0"))
    except ValueError:
        raise ValueError("EDGE_START_S and EDGE_PORT must be numbers") from None
    return EdgeConfig(upstream=env["EDGE_UPSTREAM"], space_id=env["EDGE_SPACE_ID"],
                      hub_token=env["EDGE_HUB_TOKEN"], start_s=start_s, port=port,
                      host=env.get("EDGE_HOST", "127.0.0.1"),
                      private=env.get("EDGE_PRIVATE", "1").lower() in {"1", "true", "yes"})


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """`python -m router_tools.local_edge`: serve until SIGINT or SIGTERM."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied call is noise
    try:
        edge = LocalEdge(config_from_env(os.environ))
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"error: cannot listen: {exc.strerror}\n")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    log.info("local edge for %s on %s", edge.config.space_id, edge.url)
    try:
        edge.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        edge.server.server_close()
        edge.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
