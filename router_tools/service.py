"""The router as a service (`python -m router serve`): a plain ASGI app on uvicorn.

It serves the `ask` function's endpoints on DigitalOcean's URL shape
(`/api/v1/web/<namespace>/chat/ask/...`) and the chat page at `/`, with the same library the
function runs (one engine), awaited on uvicorn's loop. Unlike the function, `stream: true`
streams for real (router/_streaming.py). Each request gets the deadline the function would: the
configured one, within project.yml's `limits.timeout`.

uvicorn brings the rest: uvloop and httptools where installed, a keep-alive timeout, a
connection limit, graceful SIGTERM (streams in flight get `grace_s` to finish); an idle or slow
client costs a socket, never a thread.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from router._do_event import PLATFORM_BODY_LIMIT, WebFunction
from router._http_types import HttpRequest, HttpResponse
from router._stream_out import STREAMING
from router_tools.serving import UvicornHost

STATIC = Path(__file__).resolve().parent / "static"

Scope = dict[str, Any]
Message = dict[str, Any]

# uvicorn's knobs: idle keep-alive sockets close after this; past `limit_concurrency` open
# connections new ones get a 503; SIGTERM lets streams in flight finish for `grace_s`.
KEEP_ALIVE_S = 5
CONNECTION_LIMIT = 2_000
GRACE_S = 30.0


def _error(status: int, code: str, message: str) -> HttpResponse:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return HttpResponse.json(status, {"error": {"type": kind, "code": code, "message": message}})


class RouterService:
    """The ASGI app: the function's routes under its URL prefix, and the chat page."""

    def __init__(self, function: WebFunction, *, namespace: str = "local",
                 timeout_ms: int = 28_000) -> None:
        self.function = function
        self.namespace = namespace
        self.timeout_ms = timeout_ms
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
                try:
                    self.function.router()  # settings are checked once, at startup
                except Exception as exc:  # a bad setting: uvicorn reports it and exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.function.router().aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        match = self._path_re.match(scope["path"])
        if match is None:
            await _send(send, self._static(scope["path"]))
            return
        body = await _read_body(headers, receive)
        if body is None:
            await _send(send, _error(413, "payload_too_large", "request over 1 MB"), close=True)
            return
        if headers.get("origin") == f"http://{headers.get('host', '')}":
            # The chat page this service serves calls from its own origin: a same-origin
            # request, which CORS does not govern (browsers send Origin on POST anyway).
            del headers["origin"]
        request = HttpRequest(scope["method"], match.group("rest") or "/", headers, body,
                              scope.get("query_string", b"").decode("latin-1"))
        token = STREAMING.set(True)
        try:
            answering = asyncio.create_task(
                self.function.router().handle_async(request, self.timeout_ms))
        finally:
            STREAMING.reset(token)
        # A client that hangs up before the answer starts (a stream waiting for its first
        # token, say) ends the work too: no backend keeps generating, no fallback starts.
        if not await _unless_gone(answering, receive):
            return
        await _send(send, answering.result(), receive=receive)

    def _static(self, path: str) -> HttpResponse:
        if path in ("/", "/index.html") and (STATIC / "index.html").is_file():
            page = (STATIC / "index.html").read_text().replace("{{FUNCTION_PATH}}", self.prefix)
            return HttpResponse(200, page, {"content-type": "text/html; charset=utf-8"})
        return _error(404, "not_found", f"the function lives at {self.prefix}")


async def _read_body(headers: dict[str, str], receive: Any) -> bytes | None:
    """The request body, or None past the platform's 1 MB (checked while reading)."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > PLATFORM_BODY_LIMIT:
        return None
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > PLATFORM_BODY_LIMIT:
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
                receive: Any = None) -> None:
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
    relaying, watcher = asyncio.create_task(pump()), asyncio.create_task(
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


class Service(UvicornHost):
    """The service on a socket bound up front: `serve_forever` (the CLI) or `start` (tests)."""

    thread_name = "router-service"

    def __init__(self, function: WebFunction, *, namespace: str = "local",
                 timeout_ms: int = 28_000, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.app = RouterService(function, namespace=namespace, timeout_ms=timeout_ms)
        self.host = host
        self._host(self.app, host=host, port=port, timeout_keep_alive=KEEP_ALIVE_S,
                   limit_concurrency=CONNECTION_LIMIT, timeout_graceful_shutdown=int(GRACE_S),
                   backlog=2048)

    @property
    def function_url(self) -> str:
        """The function URL, in DigitalOcean's shape."""
        return f"http://{self.host}:{self.port}{self.app.prefix}"
