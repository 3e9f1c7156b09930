"""What the door (router_service/_door.py) writes and reads on the wire, beside uvicorn: its
own refusals, written straight to the socket (there is no request yet for the app to answer),
the flow control that keeps a pipelining client unread, and what it takes from the headers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.flow_control import FlowControl


def refusal(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer with our JSON error, closing the connection."""
    body = (b'{"error":{"type":"invalid_request_error","code":"' + code.encode()
            + b'","message":"' + message.encode() + b'"}}')
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra
            + b"connection: close\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


BUSY = refusal(b"503 Service Unavailable", "too_many_connections",
               "too many connections from this address group, or at the cap; retry later",
               b"retry-after: 5\r\n")
SLOW = refusal(b"408 Request Timeout", "request_timeout", "the request did not arrive in time")
UPGRADE = refusal(b"400 Bad Request", "upgrade_not_supported",
                  "protocol upgrades (h2c, websocket) are not supported: send the request as "
                  "plain HTTP/1.1, without Upgrade")


class TooManyHeaders(Exception):
    """Raised from the parser's header callback: the only way to stop httptools mid-feed."""


class GatedFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while `holding` bytes."""

    def __init__(self, transport: asyncio.Transport, holding: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._holding = holding

    def resume_reading(self) -> None:
        """Resume reading unless bytes read earlier still wait to be parsed."""
        if not self._holding():
            super().resume_reading()


def content_length(headers: dict[bytes, bytes]) -> int | None:
    """The body's declared length; None for a chunked body (or one llhttp will refuse)."""
    if b"transfer-encoding" in headers:
        return None
    value = headers.get(b"content-length", b"0")
    return int(value) if value.isdigit() else None


def credentials(headers: dict[bytes, bytes]) -> dict[str, str]:
    """The headers a credential travels in, for the door's check."""
    return {name: headers[name.encode()].decode("latin-1")
            for name in ("authorization", "x-api-key") if name.encode() in headers}


