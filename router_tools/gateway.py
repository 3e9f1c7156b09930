"""The local gateway: serves the `ask` function over HTTP on DigitalOcean's URL shape.

It calls the real `main(event, context)` with raw web events and a context whose deadline comes
from project.yml's `limits.timeout`. The same program runs the router as an App Platform service
next to the worker, where the worker can stay internal.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from router._do_event import PLATFORM_BODY_LIMIT, FunctionContext

log = logging.getLogger("router.gateway")

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "packages" / "chat" / "ask" / "__main__.py"
PROJECT = ROOT / "project.yml"
STATIC = Path(__file__).resolve().parent / "static"

Main = Callable[[dict[str, Any], Any], dict[str, Any]]
# Past this, a too-large upload is cut off rather than read and thrown away.
DRAIN_LIMIT = 8 * 1024 * 1024
_TEXT_TYPES = ("json", "text", "xml", "x-www-form-urlencoded", "javascript")


def load_entry(path: Path = ENTRY) -> Main:
    """Import a function's `__main__.py` the way the runtime does and return its `main`."""
    spec = importlib.util.spec_from_file_location("chat_ask_entry", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main: Main = module.main
    return main


def function_limits(project: Path = PROJECT, package: str = "chat", function: str = "ask"
                    ) -> dict[str, int]:
    """The function's `limits` (timeout in ms, memory in MB) as project.yml declares them."""
    import yaml  # only the gateway needs it, never the function

    data = yaml.safe_load(project.read_text())
    for pkg in data.get("packages", []):
        if pkg.get("name") != package:
            continue
        for fn in pkg.get("functions", []):
            if fn.get("name") == function:
                return {k: int(v) for k, v in (fn.get("limits") or {}).items()}
    raise LookupError(f"{package}/{function} is not in {project}")


def build_event(method: str, rest: str, headers: dict[str, str], body: bytes,
                query: str) -> dict[str, Any]:
    """A `web: raw` event as DigitalOcean builds it: text bodies as-is, others base64."""
    ctype = headers.get("content-type", "").lower()
    is_text = not body or any(t in ctype for t in _TEXT_TYPES)
    text: str | None = None
    if is_text:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return {"http": {
        "method": method, "path": rest, "headers": headers, "queryString": query,
        "body": text if text is not None else base64.b64encode(body).decode("ascii"),
        "isBase64Encoded": text is None,
    }}


class ThreadedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer for bursts: a long accept queue, daemon handler threads."""

    # socketserver listens with a backlog of 5: a burst of more simultaneous connections
    # overflows the accept queue and the kernel resets them (a ReadError for the caller)
    # before a handler thread is ever started. The kernel still caps this at somaxconn.
    request_queue_size = 1024
    daemon_threads = True


class BackgroundServer:
    """A ThreadingHTTPServer that can also serve from a background thread (tests, the stack)."""

    server: ThreadingHTTPServer
    thread_name = "http-server"
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name=self.thread_name)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(5)


class Gateway(BackgroundServer):
    """A threaded HTTP server in front of one function entry."""

    thread_name = "gateway"

    def __init__(self, main: Main, *, namespace: str = "local", timeout_ms: int = 28_000,
                 host: str = "127.0.0.1", port: int = 8080) -> None:
        self.main = main
        self.namespace = namespace
        self.timeout_ms = timeout_ms
        self.host = host
        self.prefix = f"/api/v1/web/{namespace}/chat/ask"
        self._path_re = re.compile(rf"^{re.escape(self.prefix)}(?P<rest>/.*)?$")
        self.server = ThreadedServer((host, port), self._handler_class())

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server.server_address[1])

    @property
    def function_url(self) -> str:
        """The function URL, in DigitalOcean's shape."""
        return f"http://{self.host}:{self.port}{self.prefix}"

    def invoke(self, method: str, path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        """Route one HTTP request: the function, the chat page, or a 404."""
        parts = urlsplit(path)
        match = self._path_re.match(parts.path)
        if match is None:
            return self._static(parts.path)
        if len(body) > PLATFORM_BODY_LIMIT:
            return json_reply(413, {"error": {"type": "invalid_request_error", "code":
                                         "payload_too_large", "message": "request over 1 MB"}})
        if headers.get("origin") == f"http://{headers.get('host', '')}":
            # The chat page this gateway serves calls from its own origin: a same-origin
            # request, which CORS does not govern (browsers send Origin on POST anyway).
            headers = {k: v for k, v in headers.items() if k != "origin"}
        event = build_event(method, match.group("rest") or "/", headers, body, parts.query)
        context = FunctionContext.with_timeout(self.timeout_ms, namespace=self.namespace,
                                               function_name=f"/{self.namespace}/chat/ask")
        result = self.main(event, context)
        out = result.get("body", "")
        data = out.encode("utf-8") if isinstance(out, str) else json.dumps(out).encode("utf-8")
        out_headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        return int(result.get("statusCode", 200)), out_headers, data

    def _static(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if path in ("/", "/index.html") and (STATIC / "index.html").is_file():
            page = (STATIC / "index.html").read_text().replace("{{FUNCTION_PATH}}", self.prefix)
            return 200, {"content-type": "text/html; charset=utf-8"}, page.encode()
        return json_reply(404, {"error": {"type": "not_found_error", "code": "not_found",
                                          "message": f"the function lives at {self.prefix}"}})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes; with Nagle on, the body waits for the
            # client's delayed ACK (40 ms on Linux).
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = content_length(self.headers.get("content-length"))
                if length < 0:
                    status, headers, data = BAD_CONTENT_LENGTH
                    self.close_connection = True
                elif length > PLATFORM_BODY_LIMIT:
                    status, headers, data = json_reply(413, {"error": {
                        "type": "invalid_request_error", "code": "payload_too_large",
                        "message": "request over 1 MB"}})
                    self.close_connection = True
                    if length <= DRAIN_LIMIT:
                        # Read what the client is still sending, so that it sees our 413 and
                        # not a connection reset in the middle of its upload.
                        _drain(self.rfile, length)
                else:
                    body = self.rfile.read(length) if length else b""
                    lower = {k.lower(): v for k, v in self.headers.items()}
                    status, headers, data = gateway.invoke(self.command, self.path, lower, body)
                self.send_response(status)
                if self.close_connection:
                    # Say so, or a keep-alive client may reuse the socket we are closing.
                    self.send_header("connection", "close")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None  # the function logs one line per request itself

        return Handler

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted."""
        self.server.serve_forever()


def content_length(value: str | None) -> int:
    """A request's Content-Length: 0 when absent, -1 when it is not a non-negative integer."""
    try:
        length = int(value or 0)
    except ValueError:
        return -1
    return length if length >= 0 else -1


def _drain(stream: Any, length: int) -> None:
    while length > 0:
        chunk = stream.read(min(length, 65_536))
        if not chunk:
            return
        length -= len(chunk)


def json_reply(status: int, data: Any) -> tuple[int, dict[str, str], bytes]:
    """A JSON answer as (status, headers, body), for the handlers of both local servers."""
    return status, {"content-type": "application/json"}, json.dumps(data).encode()


def ensure_import_path() -> None:
    """Let the entry import `router` from the checkout, as build.sh's copy does when deployed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# The answer both local servers give a request whose Content-Length they cannot use.
BAD_CONTENT_LENGTH = json_reply(400, {"error": {
    "type": "invalid_request_error", "code": "bad_content_length",
    "message": "Content-Length must be a non-negative integer"}})
