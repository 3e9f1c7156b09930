"""uvicorn on a socket bound up front: the base of the service and of the local edge."""

from __future__ import annotations

import importlib.util
import socket
import threading
from typing import Any, Self


class UvicornHost:
    """Binds `host:port` at once (a busy port fails at construction, and port 0 is known), then
    serves an ASGI app with uvicorn: `serve_forever` (the CLIs) or `start`/`stop` (tests, the
    local stack). uvloop and httptools are used where they are installed, unless `options`
    name a loop or protocol."""

    thread_name = "uvicorn"

    def _host(self, app: Any, *, host: str, port: int, **options: Any) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when it is.
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        fast = importlib.util.find_spec("uvloop") and importlib.util.find_spec("httptools")
        options.setdefault("loop", "uvloop" if fast else "asyncio")
        options.setdefault("http", "httptools" if fast else "h11")
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=0, lifespan="on", log_level="warning", access_log=False,
            # uvicorn's own lines go through the service's JSON handler (router_service's
            # CLI: `configure_logging`), not its plain-text one.
            log_config=None, server_header=False, date_header=False, **options))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.sock.getsockname()[1])

    def serve_forever(self) -> None:
        """Serve on this thread until SIGINT or SIGTERM (then finish answers in flight)."""
        self.server.run(sockets=[self.sock])

    def start(self) -> Self:
        """Serve on a background thread; return once it accepts connections."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        daemon=True, name=self.thread_name)
        self._thread.start()
        ready = threading.Event()
        while not self.server.started and self._thread.is_alive():
            ready.wait(0.01)
        if not self.server.started:
            raise RuntimeError(f"{self.thread_name} did not start")
        return self

    def stop(self) -> None:
        """Stop serving (if started) and close the socket."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()
