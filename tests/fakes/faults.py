"""The faults the matrix injects, and the one the ASGI fake cannot: a TCP reset mid-body.

Each fault is a FakeBackend mode (or a refused port, or `ResetServer`), with what the router
must make of it on each backend (DESIGN §4, README "Fallback"). `resend` marks the faults after
which the same generation may be sent again, because the model never ran it: a refused
connection, a 502 from the edge, and a 429 or 503 whose `Retry-After` fits the budget.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

from tests.fakes.openai_backend import Seen


@dataclass(frozen=True)
class Fault:
    """One injected fault and the `X-Chat-Fallback` reason it must produce on each backend."""

    name: str
    mode: str
    space_reason: str
    worker_reason: str
    retry_after: str | None = None
    delay_s: float = 0.0
    resend: bool = False


# The Space's share of a 2 s deadline is 1 s (FALLBACK_RESERVE_MS=1000); a first byte after
# 1.4 s is past it, and past the worker's share too.
FAULTS = [
    Fault("refused connection", "refused", "unavailable", "unavailable", resend=True),
    Fault("reset mid-body", "rst", "unavailable", "unavailable"),
    Fault("hang, no bytes", "hang", "timeout", "timeout"),
    Fault("first byte after its share", "slow", "timeout", "timeout", delay_s=1.4),
    Fault("200 + HTML (sleeping page)", "sleeping", "space_sleeping", "error"),
    Fault("502", "status:502", "space_starting", "unavailable", resend=True),
    Fault("503", "status:503", "space_starting", "unavailable"),
    Fault("504", "status:504", "space_starting", "unavailable"),
    Fault("503 + Retry-After", "status:503", "space_starting", "unavailable",
          retry_after="1", resend=True),
    Fault("429 + Retry-After", "status:429", "rate_limited", "rate_limited",
          retry_after="1", resend=True),
    Fault("500 (sent again once)", "status:500", "unavailable", "unavailable", resend=True),
    Fault("malformed JSON", "bad_json", "error", "error"),
    Fault("JSON without choices", "no_choices", "error", "error"),
    Fault("wrong content type", "wrong_ctype", "error", "error"),
    Fault("truncated SSE stream", "sse_truncated", "error", "error"),
    Fault("drip-feeding bytes", "drip", "timeout", "timeout", delay_s=20.0),
    Fault("answer over 1 MB", "huge", "error", "error"),
]


def refused_url() -> str:
    """A loopback URL on which nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class ResetServer:
    """A raw TCP server that reads a request, sends the headers and part of a JSON body, then
    resets the connection (SO_LINGER 0: the kernel sends RST, not FIN)."""

    name: str
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True, name="reset-server")
        self._lock = threading.Lock()

    def start(self) -> ResetServer:
        """Accept connections on a background thread."""
        self._thread.start()
        return self

    def generation_requests(self) -> int:
        """How many chat-completion requests reached this server."""
        with self._lock:
            return sum(1 for s in self.seen if s.path == "/v1/chat/completions")

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        with self._lock:
            self.seen.append(Seen(method, path, headers, None))
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"choices\": [{\"mess")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def stop(self) -> None:
        """Close the listening socket; the accept loop ends."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(5)
