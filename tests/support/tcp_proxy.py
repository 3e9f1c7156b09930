"""A loopback TCP proxy that can hold a server's replies: a Redis made slow on demand.

While `hold()` is in force, what the client sends still reaches the server at once, but the
server's replies wait in the proxy until `release()`. `sent` is set when a client's bytes went
through during a hold (someone is now waiting for a reply); `client_closed` when a client hung
up on the proxy (it gave up waiting). No timing: the test decides when replies flow.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class HoldingProxy:
    """127.0.0.1:<port> forwarding to `target`, one pair of pump threads per connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.sent = threading.Event()
        self.client_closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="holding-proxy").start()

    def hold(self) -> None:
        """From now on, keep the server's replies; note the next client bytes that go through."""
        self.sent.clear()
        self.client_closed.clear()
        self.flowing.clear()

    def release(self) -> None:
        """Deliver the held replies, and let replies flow again."""
        self.flowing.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client:
                    if not self.flowing.is_set():
                        self.sent.set()
                else:
                    self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        if from_client:
            self.client_closed.set()
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting, release everything held, close every connection."""
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self.release()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        for sock in sockets:
            sock.close()

    def __enter__(self) -> HoldingProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
