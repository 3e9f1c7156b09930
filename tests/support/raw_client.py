"""A raw TCP client for the service's door: the requests no HTTP library will send (nothing at
all, half a header, a body one byte at a time), from any loopback source address."""

from __future__ import annotations

import socket
import time


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to 127.0.0.1:`port` from `source` (any 127.x.y.z: all of it is loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (True) or `within_s` passes (False)."""
    data = b""
    end = time.monotonic() + within_s
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65_536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def drip(sock: socket.socket, body: bytes, every_s: float) -> tuple[bytes, int]:
    """Send `body` one byte at a time, the next one each time the server stays silent for
    `every_s`; stop when it answers or closes. What it answered, and the bytes sent."""
    for sent, byte in enumerate(body):
        sock.settimeout(every_s)
        try:
            answer = sock.recv(65_536)
        except TimeoutError:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return b"", sent
            continue
        except ConnectionResetError:
            return b"", sent
        return answer, sent
    return read_until_closed(sock, every_s * 10)[0], len(body)


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    """A request line and headers, ready to send."""
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0 when there is none)."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") else 0
