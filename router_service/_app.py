"""The router as a service: a plain ASGI app, on uvicorn behind the door (router_service/_door.py).

It serves the `ask` function's endpoints on DigitalOcean's URL shape
(`/api/v1/web/<namespace>/chat/ask/...`) and the chat page at `/`, with the same ChatRouter the
function runs (one loop), awaited on uvicorn's loop. Unlike the function, `stream: true`
streams for real: its edge says so (`Edge(live_streams=True)`). Each request gets the deadline
the function would: the configured one, within project.yml's `limits.timeout` (the edge's own
time limit).

The headers come first: the route, CORS, the credential and the quota are checked
(`ChatRouter.admit`) before a byte of the body is read, and a refused request is answered and
its connection closed with its body unread. The body is capped at `MAX_BODY_BYTES`, as in the
function: a larger `Content-Length` is refused at once, a chunked body while it is read.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from pathlib import Path
from typing import Any

from router import (
    ChatRouter,
    Edge,
    HttpRequest,
    HttpResponse,
    PayloadTooLarge,
    RouterError,
    error_response,
)
from router_service._metrics import CONTENT_TYPE, RouterMetrics

STATIC = Path(__file__).resolve().parent / "static"
# Prometheus' scrape path, beside the function's prefix (behind the same credential).
METRICS_PATH = "/metrics"

Scope = dict[str, Any]
Message = dict[str, Any]

def _error(status: int, code: str, message: str) -> HttpResponse:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return HttpResponse.json(status, {"error": {"type": kind, "code": code, "message": message}})


class _Disconnected(Exception):
    """The client hung up before its body was complete: nothing to answer."""


class RouterService:
    """The ASGI app: the function's routes under its URL prefix, and the chat page, answered
    by `router` (built by the caller from the settings, which are checked then)."""

    def __init__(self, router: ChatRouter, *, namespace: str = "local",
                 timeout_ms: int = 28_000, metrics: bool = True) -> None:
        self.router = router
        # What this edge does for every request: it streams as it comes, and gives the whole
        # answer the function's own time limit (project.yml's `limits.timeout`).
        self.edge = Edge(time_limit_ms=timeout_ms, live_streams=True)
        self.metrics_on = metrics
        self.metrics: RouterMetrics | None = None  # made at startup, with the router
        self.namespace = namespace
        self.prefix = f"/api/v1/web/{namespace}/chat/ask"
        self._path_re = re.compile(rf"^{re.escape(self.prefix)}(?P<rest>/.*)?$")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                router = self.router
                if await router.quotas.verify() == "misconfigured":
                    # A wrong Redis password would turn every quota off in silence: refuse.
                    await send({"type": "lifespan.startup.failed", "message": (
                        "REDIS_URL: the quota store refused the login; fix its user or "
                        "password")})
                    return
                if self.metrics_on and self.metrics is None:
                    self.metrics = RouterMetrics(router.engine.breaker_states)
                    router.observe(self.metrics)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.router.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if scope["path"] == METRICS_PATH and self.metrics is not None:
            await _send(send, self._scrape(self.metrics, headers, scope))
            return
        match = self._path_re.match(scope["path"])
        if match is None:
            await _send(send, self._static(scope["path"]))
            return
        router = self.router
        limit = router.settings.max_body_bytes
        if headers.get("origin") == f"http://{headers.get('host', '')}":
            # The chat page this service serves calls from its own origin: a same-origin
            # request, which CORS does not govern (browsers send Origin on POST anyway).
            del headers["origin"]
        head = HttpRequest(scope["method"], match.group("rest") or "/", headers, b"",
                           scope.get("query_string", b"").decode("latin-1"), peer=_peer(scope))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send(send, self._too_large(router, head, limit), close=True)
            return
        admission = await router.admit(head)
        if isinstance(admission, HttpResponse):
            # Refused on its headers: its body is never read, and the connection closes.
            await _send(send, admission, close=True)
            return
        if not admission.subject:
            # No credential was checked (a preflight, a warm-up ping, /health): answered from
            # its headers alone, its body never read; one that announced a body is closed.
            announced = declared not in ("", "0") or "transfer-encoding" in headers
            await _send(send, await router.answer(admission, b"", self.edge), close=announced)
            return
        try:
            body = await _read_body(receive, limit)
        except _Disconnected:
            return
        if body is None:
            await _send(send, self._too_large(router, head, limit), close=True)
            return
        # One context for the answer and its relay: what the router set while answering (the
        # request's trace) is still there when the stream's last chunk is relayed.
        context = contextvars.copy_context()
        answering = asyncio.create_task(router.answer(admission, body, self.edge),
                                        context=context)
        # A client that hangs up before the answer starts (a stream waiting for its first
        # token, say) ends the work too: no backend keeps generating, no fallback starts.
        if not await _unless_gone(answering, receive):
            return
        await _send(send, answering.result(), receive=receive, context=context)

    @staticmethod
    def _too_large(router: ChatRouter, head: HttpRequest, limit: int) -> HttpResponse:
        # Logged, counted and traced by the router like any refusal (with CORS headers, so a
        # browser can read why).
        return router.refuse(head, PayloadTooLarge(f"the body is larger than {limit} bytes"))

    def _scrape(self, metrics: RouterMetrics, headers: dict[str, str], scope: Scope
                ) -> HttpResponse:
        # The same credential as the function's endpoints (API_KEYS or a client token; open
        # when the function is open to anyone). No quota: a scraper polls on its own clock.
        request = HttpRequest(scope["method"], METRICS_PATH, headers, peer=_peer(scope))
        if scope["method"] != "GET":
            return _error(405, "method_not_allowed", "GET /metrics only")
        try:
            self.router.access.subject(request)
        except RouterError as exc:
            return error_response(exc)
        return HttpResponse(200, metrics.exposition().decode("utf-8"),
                            {"content-type": CONTENT_TYPE})

    def _static(self, path: str) -> HttpResponse:
        if path in ("/", "/index.html") and (STATIC / "index.html").is_file():
            page = (STATIC / "index.html").read_text().replace("{{FUNCTION_PATH}}", self.prefix)
            return HttpResponse(200, page, {"content-type": "text/html; charset=utf-8"})
        return _error(404, "not_found", f"the function lives at {self.prefix}")


def _peer(scope: Scope) -> str:
    """The connection's own address (X-Forwarded-For counts only from TRUSTED_PROXIES)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, or None past `limit` bytes (checked while reading)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected  # a part of a body is never answered as if it were whole
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            return bytes(body)


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(work: asyncio.Task[Any], receive: Any) -> bool:
    """Wait for `work`; cancel it if the client disconnects first. True when it finished."""
    watcher = asyncio.create_task(_until_disconnect(receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
        await asyncio.gather(work, watcher, return_exceptions=True)
    return not work.cancelled()


async def _send(send: Any, response: HttpResponse, *, close: bool = False,
                receive: Any = None, context: contextvars.Context | None = None) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    if response.stream is None:
        data = response.body.encode("utf-8")
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": data})
        return
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    stream = response.stream

    async def pump() -> None:
        async for text in stream:
            await send({"type": "http.response.body", "body": text.encode("utf-8"),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    # The client hanging up cancels the relay at once, whatever the backend is doing (a
    # stalled backend sends no next chunk to notice it by): its stream closes, and no
    # fallback attempt starts for a client that has gone.
    relaying, watcher = asyncio.create_task(pump(), context=context), asyncio.create_task(
        _until_disconnect(receive))
    try:
        await asyncio.wait({relaying, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (relaying, watcher):
            task.cancel()
        await asyncio.gather(relaying, watcher, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
    if relaying.done() and not relaying.cancelled():
        relaying.result()  # a failure of the relay itself is raised, never swallowed
