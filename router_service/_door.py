"""The service's door: uvicorn's httptools protocol with a time limit on every phase.

uvicorn times out only an idle keep-alive connection after a response. A client that connects
and sends nothing, stops halfway through its headers or drips its body one byte at a time holds
a socket (and a place under the connection cap) for as long as it likes. This protocol adds:

- a header timer, armed when the connection opens (or the next request's first byte arrives)
  and cancelled when the headers are complete;
- a body timer: a body of n bytes may take `header_timeout + n / body_min_bytes_per_s`;
- a per-address count: an address over its share of the cap gets 503 and is closed before a
  byte of its request is read.

A client that misses a limit gets `408` (when no answer has started) and the connection closes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router_service._limits import ServiceLimits


def _refusal(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    # Written straight to the socket: there is no request (yet) for the app to answer.
    body = (b'{"error":{"type":"invalid_request_error","code":"' + code.encode()
            + b'","message":"' + message.encode() + b'"}}')
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra
            + b"connection: close\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


_BUSY = _refusal(b"503 Service Unavailable", "too_many_connections",
                 "too many connections from this address; retry later", b"retry-after: 5\r\n")
_SLOW = _refusal(b"408 Request Timeout", "request_timeout",
                 "the request did not arrive in time")


class Door:
    """What every connection of one server shares: the limits and the count per address."""

    def __init__(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self.per_address: Counter[str] = Counter()
        # Totals since start, for tests and the hostile bench.
        self.refused = 0
        self.timed_out = 0

    def enter(self, address: str) -> bool:
        """Count a new connection from `address`; False when that address has its share."""
        if self.per_address[address] >= self.limits.max_connections_per_address:
            self.refused += 1
            return False
        self.per_address[address] += 1
        return True

    def leave(self, address: str) -> None:
        """Forget one connection from `address`."""
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]

    def open_connections(self) -> int:
        """Connections counted now, over all addresses."""
        return sum(self.per_address.values())


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the door's timers and per-address share.

    `door` is set on a subclass per server (`guarded_protocol`): uvicorn builds one protocol
    per connection from a class, and the class is how they share state.
    """

    door: ClassVar[Door]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address = ""
        self._counted = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_headers = False
        self._body_started = 0.0
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection against its address, or refuse it; then arm the header timer."""
        super().connection_made(transport)
        self._address = self.client[0] if self.client else ""
        if not self.door.enter(self._address):
            transport.write(_BUSY)
            transport.close()
            return
        self._counted = True
        self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the address's place and every timer."""
        self._cancel()
        if self._counted:
            self._counted = False
            self.door.leave(self._address)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a refused connection reads nothing."""
        if self._counted:
            super().data_received(data)

    def on_message_begin(self) -> None:
        """A new request: on a kept-alive connection its headers get their own timer."""
        super().on_message_begin()
        if not self._waiting_headers:
            self._wait_for_headers()

    def on_headers_complete(self) -> None:
        """Headers in time: the body's rate timer takes over until the message is complete."""
        self._cancel()
        self._waiting_headers = False
        super().on_headers_complete()
        self._body_started = time.monotonic()
        self._body_bytes = 0
        self._timer = self.loop.call_later(self.door.limits.header_timeout_s, self._body_check)

    def on_body(self, body: bytes) -> None:
        """Count the body's bytes for its rate."""
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The whole request is in: no timer until the next one begins."""
        self._cancel()
        super().on_message_complete()

    def _wait_for_headers(self) -> None:
        self._cancel()
        self._waiting_headers = True
        self._timer = self.loop.call_later(self.door.limits.header_timeout_s, self._too_slow)

    def _body_check(self) -> None:
        self._timer = None
        limits = self.door.limits
        due = (self._body_started + limits.header_timeout_s
               + self._body_bytes / limits.body_min_bytes_per_s)
        now = time.monotonic()
        if due > now or self.flow.read_paused:
            # On time, or the app has not read what came (uvicorn paused the socket): then the
            # client is not the slow one. Look again when the rate would next be missed.
            self._timer = self.loop.call_later(max(due - now, 0.05), self._body_check)
            return
        self._too_slow()

    def _too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self.door.timed_out += 1
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_SLOW)
        self.transport.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def guarded_protocol(door: Door) -> type[GuardedHttpTools]:
    """A protocol class for one server, sharing `door` between its connections."""
    return type("DoorHttpTools", (GuardedHttpTools,), {"door": door})
