"""A local stand-in for Hugging Face's edge and Hub, in front of the local Space's model server.

It behaves, over real HTTP, the way Hugging Face's edge does: a RUNNING Space is proxied
to its app (the `Authorization` header reaches the app, `X-HF-Authorization` is checked and
stripped), a SLEEPING Space answers HTTP 200 with the sleeping page, a starting one answers 503
with an HTML page, and the Hub endpoints the router and `huggingface_hub` call (`runtime`,
`restart`, `pause`, `sleeptime`) drive the stage. A restart goes APP_STARTING, then RUNNING once
`start_s` has passed and the app's /health answers 200. `POST /_local/sleep` puts the Space to
sleep at once; it is local-only (the Hub has no such call; a real Space sleeps when idle).

A plain ASGI app on uvicorn, like the service (router_service); httpx calls the app, and the app's
answers (streams included) are relayed chunk by chunk. No torch, no fastapi.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from router_service import UvicornHost
from router_tools.edge_state import PAUSED, RUNNING, SLEEPING, STARTING, SpaceState

__all__ = ["PAUSED", "RUNNING", "SLEEPING", "STARTING", "EdgeConfig", "LocalEdge", "SpaceState",
           "config_from_env", "json_reply", "main"]

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


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host",
                         "content-length", "x-hf-authorization"})
_HTML = "text/html; charset=utf-8"
# SIGTERM lets answers in flight finish for this long (the stack kills a part after 10 s).
GRACE_S = 5

Reply = tuple[int, dict[str, str], bytes]
Scope = dict[str, Any]


def json_reply(status: int, data: Any) -> Reply:
    """A JSON answer as (status, headers, body)."""
    return status, {"content-type": "application/json"}, json.dumps(data).encode()


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


class LocalEdge(UvicornHost):
    """The Space's edge and the few Hub endpoints on one port: an ASGI app served by uvicorn."""

    thread_name = "local-edge"

    def __init__(self, config: EdgeConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._transport = transport
        # The health probe is a blocking call: the app runs it on a worker thread.
        self._probe_client = httpx.Client(base_url=config.upstream.rstrip("/"), trust_env=False,
                                          transport=httpx.HTTPTransport(retries=0))
        self._client: httpx.AsyncClient | None = None  # made on uvicorn's loop, at startup
        self.state = SpaceState(start_s=config.start_s, probe=self._app_healthy)
        self._hub_prefix = f"/api/spaces/{config.space_id}/"
        try:
            self._host(self, host=config.host, port=config.port,
                       timeout_graceful_shutdown=GRACE_S, backlog=1024)
        except OSError:
            self._probe_client.close()
            raise

    @property
    def url(self) -> str:
        """Base URL of the edge (the Space's URL and the Hub endpoint)."""
        host, port = self.sock.getsockname()[:2]
        return f"http://{host!s}:{port}"

    def _app_healthy(self) -> bool:
        try:
            return self._probe_client.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def runtime(self, stage: str | None = None) -> dict[str, Any]:
        """The Hub's runtime answer for the Space (at `stage`, or the stage read now)."""
        stage = stage or self.state.stage
        return {"stage": stage,
                "hardware": {"current": self.config.hardware if stage == RUNNING else None,
                             "requested": self.config.hardware},
                "storage": None, "gcTimeout": self.state.sleep_time_s, "devMode": False}

    async def hub(self, method: str, path: str, headers: Mapping[str, str], body: bytes
                  ) -> Reply:
        """Answer a Hub API call (`/api/spaces/<id>/...`) or the local control calls."""
        if headers.get("authorization", "") != f"Bearer {self.config.hub_token}":
            return json_reply(401, {"error": "Invalid credentials in Authorization header"})
        if path == "/_local/state" and method == "GET":
            return json_reply(200, self.state.snapshot(await self.state.stage_async()))
        if path == "/_local/sleep" and method == "POST":
            self.state.sleep()
            return json_reply(200, self.runtime(await self.state.stage_async()))
        if not path.startswith(self._hub_prefix):
            return json_reply(404, {"error": "Repository not found"})
        action = path[len(self._hub_prefix):]
        if action == "runtime" and method == "GET":
            return json_reply(200, self.runtime(await self.state.stage_async()))
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
        return json_reply(200, self.runtime(await self.state.stage_async()))

    def _hidden(self, headers: Mapping[str, str]) -> bool:
        # The Hub hides a private Space from callers without a token.
        return self.config.private and \
            headers.get("x-hf-authorization", "") != f"Bearer {self.config.hub_token}"

    def _gate(self, stage: str) -> Reply | None:
        if stage == RUNNING:
            self.state.touch()
            return None
        if stage == SLEEPING:
            return 200, {"content-type": _HTML}, SLEEPING_PAGE
        if stage == PAUSED:
            return 200, {"content-type": _HTML}, PAUSED_PAGE
        return 503, {"content-type": _HTML, "retry-after": "5"}, STARTING_PAGE

    def space_gate(self, headers: Mapping[str, str]) -> Reply | None:
        """What the edge answers instead of the app, or None when the app should answer."""
        if self._hidden(headers):
            return json_reply(404, {"error": "Repository not found"})
        return self._gate(self.state.stage)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = httpx.AsyncClient(
                    base_url=self.config.upstream.rstrip("/"), trust_env=False,
                    follow_redirects=False, timeout=httpx.Timeout(300.0, connect=2.0),
                    transport=self._transport or httpx.AsyncHTTPTransport(retries=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        pairs = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                 for k, v in scope.get("headers", [])]
        headers = dict(pairs)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path.startswith(("/api/", "/_local/")):
            await _reply(send, await self.hub(method, path, headers, bytes(body)))
            return
        gate = json_reply(404, {"error": "Repository not found"}) if self._hidden(headers) \
            else self._gate(await self.state.stage_async())
        if gate is not None:
            await _reply(send, gate)
            return
        target = scope.get("raw_path") or path.encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        forward = [(k, v) for k, v in pairs if k not in _HOP_BY_HOP]
        await self._proxy(method, target.decode("latin-1"), forward, bytes(body), receive, send)

    async def _proxy(self, method: str, target: str, headers: list[tuple[str, str]],
                     body: bytes, receive: Any, send: Any) -> None:
        assert self._client is not None, "the edge is not started"
        request = self._client.build_request(method, target, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError:
            await _reply(send, (502, {"content-type": "text/html"}, BAD_GATEWAY_PAGE))
            return
        try:
            out = [(k.encode("latin-1"), v.encode("latin-1"))
                   for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
            if method == "HEAD" or response.status_code in (204, 304):
                out.append((b"content-length", b"0"))
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": out})
                await send({"type": "http.response.body", "body": b""})
                return
            # No content-length: uvicorn sends the answer chunked, one chunk per app chunk.
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": out})
            await _relay(response, receive, send)
        finally:
            await response.aclose()  # the app's stream ends with the caller's

    def stop(self) -> None:
        """Stop serving (if started), close the socket and the probe's client."""
        super().stop()
        self._probe_client.close()


async def _reply(send: Any, reply: Reply) -> None:
    status, headers, data = reply
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})  # uvicorn drops it for HEAD


async def _relay(response: httpx.Response, receive: Any, send: Any) -> None:
    """Relay the app's body chunk by chunk until it ends, breaks off, or the caller hangs up."""

    async def pump() -> None:
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError:
            # The app went away mid-answer: end without the last chunk, so uvicorn closes the
            # connection and the caller sees a cut answer, not a complete one.
            log.warning("the app's answer broke off")
            return
        await send({"type": "http.response.body", "body": b""})

    async def hang_up() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(hang_up())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        task.result()  # an unexpected error surfaces (uvicorn logs it)


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
    # uvicorn catches SIGINT and SIGTERM, finishes answers in flight, then raises the signal
    # again with these handlers restored: both end here as a KeyboardInterrupt, exit code 0.
    signal.signal(signal.SIGTERM, _interrupt)
    log.info("local edge for %s on %s", edge.config.space_id, edge.url)
    try:
        edge.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        edge.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
