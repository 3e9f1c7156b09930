"""The service's door: uvicorn's httptools protocol with a limit on every phase of a request.

uvicorn times out only an idle keep-alive connection after a response. A client that connects
and sends nothing, stops halfway through its headers, drips its body, never reads its answer,
pipelines thousands of requests or sends a 64 MB header holds a socket (and memory) for as long
as it likes. This protocol adds:

- a header timer, armed when the connection opens (or the next request's first byte arrives)
  and cancelled when the headers are complete;
- a body timer: a body of n bytes may take `header_timeout + n / body_min_bytes_per_s`;
- a write timer: output queued past the transport's high-water mark must drain within
  `write_timeout`, or the connection is dropped with what it queued;
- header limits: past `max_header_bytes` (line and headers) or `max_header_count` fields, 431
  before the rest is read (httptools would build a header of any size);
- a pipelining gate: while a request waits parsed behind the one being answered, the parser is
  fed nothing more, and the socket is not read;
- an `Upgrade` (h2c, websocket) is refused in one log line: with a body, 400; without one, the
  request is answered as plain HTTP/1.1 and the connection closes;
- the fair share of the connection cap (router_service/_fair.py).

A client that misses a time limit gets `408` (when no answer has started) and the connection
closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from router_service._fair import Door, group_of
from router_service._wire import (
    BUSY,
    SLOW,
    UPGRADE,
    GatedFlow,
    TooManyHeaders,
    content_length,
    credentials,
    refusal,
)

log = logging.getLogger("router.door")
# Requests parsed and waiting behind the one being answered, at most.
PIPELINE_DEPTH = 1
IDLE, HEAD, BODY = "idle", "head", "body"  # where the parser is in the current request


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the door's limits (see the module's docstring).

    `door` is set on a subclass per server (`guarded_protocol`): uvicorn builds one protocol
    per connection from a class, and the class is how they share state.
    """

    door: ClassVar[Door]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = ""
        self.credentialed = False
        self._counted = False
        self._stalled = True
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_left = 0
        self._waiting_headers = False
        self._body_started = 0.0
        self._body_bytes = 0
        self._phase = IDLE
        self._head_bytes = 0
        self._head_count = 0
        self._body_left: int | None = None
        self._unparsed = b""  # read, not yet fed: the pipelining gate holds it
        self._tail = b""  # the last bytes fed, where a header block's end may begin
        self._ignored = False  # a refused or upgraded request: nothing more is parsed
        self._refused = False  # refused on its headers: its body goes nowhere
        # The request being answered (uvicorn's `cycle` is the last one parsed, which may wait
        # in the pipeline behind it).
        self._running: RequestResponseCycle | None = None

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection in its address group, or refuse it; arm the header timer."""
        super().connection_made(transport)
        self.flow = GatedFlow(transport, lambda: bool(self._unparsed))
        self.group = group_of(self.client[0] if self.client else "")
        if not self.door.enter(self):
            transport.write(BUSY)
            transport.close()
            return
        self._counted = True
        self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the connection's place and every timer."""
        self._cancel()
        self._cancel_write()
        if self._counted:
            self._counted = False
            self.door.leave(self)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Make room at the cap (the door chose this connection, stalled the longest)."""
        self._counted = False
        running = self._running
        if self.flow.write_paused or (running is not None and running.response_started
                                      and not running.response_complete):
            self._drop()
        elif self._phase != IDLE:
            self.transport.write(BUSY)  # a request was arriving: say why it ends
            self.transport.close()
        else:
            self.transport.close()  # idle: closing a kept-alive connection is ordinary

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Start answering a request (uvicorn's), remembering which one it is."""
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _restate(self) -> None:
        """Tell the door whether this connection is stalled or busy, when that changed."""
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete and not cycle.more_body
        stalled = self.flow.write_paused or not answering
        if stalled != self._stalled and self._counted:
            self._stalled = stalled
            self.door.mark(self, stalled)

    # -- reading: the header limits and the pipelining gate -------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed the parser within the limits; a refused connection reads nothing."""
        if not self._counted or self._ignored or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._unparsed:  # still holding earlier bytes: keep these too, read no more
            self._unparsed += data
            self.flow.pause_reading()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and not self._ignored and not self.transport.is_closing():
            if len(self.pipeline) >= PIPELINE_DEPTH:
                self._unparsed = data[pos:]
                self.flow.pause_reading()
                return
            stop = self._slice_end(data, pos)
            if stop == pos:
                self._refuse_headers()
                return
            if self._phase == IDLE and not self._waiting_headers:
                # Bytes between requests (blank lines, or the next request's start): the
                # header timer runs from the first, or blank lines would idle for ever.
                self._wait_for_headers()
            if self._phase != BODY:
                self._head_bytes += stop - pos
                self._tail = (self._tail + data[max(pos, stop - 3):stop])[-3:]
            try:
                self.parser.feed_data(data[pos:stop])
            except httptools.HttpParserUpgrade:
                self._ignored = True  # answered as plain HTTP/1.1, then closed; or refused
                return
            except httptools.HttpParserError as exc:
                if isinstance(exc.__context__, TooManyHeaders):
                    self._refuse_headers()
                else:
                    self.logger.warning("Invalid HTTP request received.")
                    self.send_400_response("Invalid HTTP request received.")
                return
            pos = stop

    def _slice_end(self, data: bytes, pos: int) -> int:
        """Where the next piece fed to the parser ends: at most one request's headers (so a
        pipelined request is parsed one at a time), within the header budget; `pos` when the
        budget is spent with the headers still unfinished."""
        if self._phase == BODY and self._body_left:
            return min(len(data), pos + self._body_left)
        if self._phase == BODY:  # chunked: its last chunk ends in a blank line too
            end = data.find(b"\r\n\r\n", pos)
            return len(data) if end < 0 else end + 4
        budget = self.door.limits.max_header_bytes - self._head_bytes
        if pos == 0 and self._tail:  # the blank line may have begun in the last piece
            end = (self._tail + data[:3]).find(b"\r\n\r\n")
            if end >= 0:
                return end + 4 - len(self._tail)
        end = data.find(b"\r\n\r\n", pos, pos + budget)
        return end + 4 if end >= 0 else min(len(data), pos + max(budget, 0))

    def _refuse_headers(self) -> None:
        self.door.headers_too_large += 1
        limits = self.door.limits
        self.transport.write(refusal(
            b"431 Request Header Fields Too Large", "headers_too_large",
            f"the request line and headers may take {limits.max_header_bytes} bytes and "
            f"{limits.max_header_count} fields"))
        self._ignored = True
        self.transport.close()

    def _take_unparsed(self) -> None:
        """A request was answered: feed what the gate held, and read again once it is gone."""
        if not self._unparsed or len(self.pipeline) >= PIPELINE_DEPTH:
            return
        data, self._unparsed = self._unparsed, b""
        self._unset_keepalive_if_required()
        self._feed(data)
        if not self._unparsed:
            self.flow.resume_reading()

    # -- the parser's callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        """A new request: on a kept-alive connection its headers get their own timer."""
        super().on_message_begin()
        self._phase, self._head_count = HEAD, 0
        if not self._waiting_headers:
            self._wait_for_headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count the fields; past the limit, stop the parser."""
        self._head_count += 1
        if self._head_count > self.door.limits.max_header_count:
            raise TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Headers in time: refuse an upgrade or a request past the reserve; else the body's
        rate timer takes over until the message is complete."""
        self._cancel()
        self._waiting_headers = False
        self._phase, self._head_bytes, self._tail = BODY, 0, b""
        headers = dict(self.headers)
        self._body_left = content_length(headers)
        if self.parser.should_upgrade() and self._upgrade_refused():
            return
        if not self.door.identified(self, credentials(headers)):
            self._ignored = self._refused = True
            self.transport.write(BUSY)
            self.transport.close()
            return
        super().on_headers_complete()
        if self._ignored:  # an upgrade without a body: answered, then closed
            self.cycle.keep_alive = False
        self._body_started = time.monotonic()
        self._body_bytes = 0
        self._timer = self.loop.call_later(self.door.limits.header_timeout_s, self._body_check)

    def on_body(self, body: bytes) -> None:
        """Count the body's bytes for its rate."""
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_left is not None:
            self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The whole request is in: no timer until the next one begins."""
        self._cancel()
        self._phase = IDLE
        if self._refused:
            return
        super().on_message_complete()
        self._restate()

    def on_response_complete(self) -> None:
        """An answer went out: the connection idles (stalled), or takes the next request."""
        super().on_response_complete()
        self._take_unparsed()
        self._restate()

    def _upgrade_refused(self) -> bool:
        """An Upgrade request: one log line; refused when it has a body (httptools would drop
        the body and take what follows as another protocol). True when refused."""
        self.door.upgrades_refused += 1
        self._ignored = True
        announced = self._body_left is None or self._body_left > 0
        log.warning("protocol upgrade refused", extra={"fields": {
            "method": self.parser.get_method().decode("latin-1")[:16],
            "answer": 400 if announced else "plain HTTP/1.1, then closed"}})
        if announced:
            self._refused = True
            self.transport.write(UPGRADE)
            self.transport.close()
        return announced

    # -- writing: the write timer --------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full: the queued output must now drain in time."""
        super().pause_writing()
        self._write_left = self.transport.get_write_buffer_size()
        self._cancel_write()
        self._write_timer = self.loop.call_later(self.door.limits.write_timeout_s,
                                                 self._write_check)
        self._restate()

    def resume_writing(self) -> None:
        """The buffer drained below its low-water mark."""
        super().resume_writing()
        self._cancel_write()
        self._restate()

    def _write_check(self) -> None:
        self._write_timer = None
        if not self.flow.write_paused or self.transport.is_closing():
            return
        left = self.transport.get_write_buffer_size()
        if left < self._write_left:  # some progress: give it another period
            self._write_left = left
            self._write_timer = self.loop.call_later(self.door.limits.write_timeout_s,
                                                     self._write_check)
            return
        self.door.write_timeouts += 1
        self._drop()

    def _drop(self) -> None:
        """Abort the connection with what it queued. The answer in flight learns at once that
        its client is gone (as uvicorn's `connection_lost` would tell it, a loop turn later):
        its next write is skipped, and its wait for a disconnect ends."""
        for cycle in {self._running, self.cycle} - {None}:
            assert cycle is not None
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.abort()

    def _cancel_write(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    # -- the header and body timers --------------------------------------------------------

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
            self.transport.write(SLOW)
        self.transport.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def guarded_protocol(door: Door) -> type[GuardedHttpTools]:
    """A protocol class for one server, sharing `door` between its connections."""
    return type("DoorHttpTools", (GuardedHttpTools,), {"door": door})
