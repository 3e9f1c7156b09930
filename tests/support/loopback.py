"""Run a real ASGI app under uvicorn on 127.0.0.1 in a background thread."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn


class LoopbackServer:
    """A uvicorn server bound to an ephemeral loopback port, for the length of a `with` block.

    The socket is bound before uvicorn starts, so the port is known and no other process can
    take it in between.
    """

    def __init__(self, app: Any, *, log_level: str = "warning") -> None:
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says TCP, and without it Nagle + delayed ACK add 40 ms per answer.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="auto", timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LoopbackServer:
        """Start the server and return once it accepts connections."""
        self.thread.start()
        started = threading.Event()

        # uvicorn flips `started` after binding; wait on it with a bounded poll of an Event.
        def _watch() -> None:
            while not self.server.started and self.thread.is_alive():
                started.wait(0.01)
            started.set()

        threading.Thread(target=_watch, daemon=True).start()
        if not started.wait(30) or not self.server.started:
            raise RuntimeError("uvicorn did not start within 30 s")
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
