"""What the router tells an observer: each request (router/_record.py), failure and wake.

Every `backend` it names is a configured deployment's name (router/_deployments.py), so the
labels an observer makes from them stay a bounded set.

The runtime only calls these hooks; it counts nothing itself. The service installs its
Prometheus metrics (router_service/_metrics.py) as the observer; the function installs none,
so its cold start and its answers pay for nothing but a check of `active` per request (the
record's module is imported only when an observer is active).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

import httpx

if TYPE_CHECKING:
    from router._record import RequestRecord


class Traced(Protocol):
    """A request's trace, as the backends' clients see it (router/_tracing.py's RequestTrace)."""

    trace_id: str  # W3C's 32 hex digits: what the request's log lines carry

    def outgoing(self, backend: str) -> dict[str, str]:
        """Start an attempt span; the trace context headers (`traceparent`, and `tracestate`
        when the caller sent one) that pass it on to the backend."""

    def end_attempt(self, error: str | None) -> None:
        """End the attempt in flight, with its failure reason (None: no failure)."""


# The request being traced, in this task (each request runs in its own asyncio task); set only
# by router/_tracing.py, which is loaded only when traces are exported.
TRACE: ContextVar[Traced | None] = ContextVar("router_trace", default=None)


def trace_hook(backend: str) -> Callable[[httpx.Request], Awaitable[None]]:
    """An httpx request hook for one backend's client: while a request is traced, each
    request to the backend is an attempt span, and carries `traceparent` (and the caller's
    `tracestate`) on."""

    async def inject(request: httpx.Request) -> None:
        trace = TRACE.get()
        if trace is not None:
            request.headers.update(trace.outgoing(backend))

    return inject


class Observer:
    """The hooks the router calls; this base does nothing (the function's default)."""

    active = False  # the router skips building records for an observer that ignores them
    # Whether it wants `wake_ready`: the wake's thread then watches a restarted deployment.
    times_wakes = False

    def request_started(self, headers: Mapping[str, str]) -> None:
        """A request arrived (its headers); called only when `active`."""

    def request_done(self, record: RequestRecord) -> None:
        """A request was answered whole (a stream: after its last chunk)."""

    def attempt_failed(self, backend: str, reason: str) -> None:
        """A backend failed the request (after any retries): why, as `X-Chat-Fallback` says."""

    def wake_checked(self, backend: str, reason: str, stage: str, restarted: bool) -> None:
        """A wake of a Space or an endpoint (`backend`, its name) was tried: the stage or
        status seen (`error` when the Hub failed), and whether it was restarted or resumed."""

    def wake_ready(self, backend: str, seconds: float) -> None:
        """A deployment restarted (resumed) by a wake runs again, `seconds` after the wake was
        asked for (reported only when `times_wakes`)."""

    def flush(self, timeout_s: float) -> None:
        """Send what is buffered, waiting at most `timeout_s` (the function, before it
        returns: the platform freezes the container then)."""


class Observers(Observer):
    """Several observers (the service's metrics and a tracer), called in turn."""

    def __init__(self, members: list[Observer]) -> None:
        self.members = members
        self.active = any(member.active for member in members)
        self.times_wakes = any(member.times_wakes for member in members)

    def request_started(self, headers: Mapping[str, str]) -> None:
        """Each member's `request_started`."""
        for member in self.members:
            member.request_started(headers)

    def request_done(self, record: RequestRecord) -> None:
        """Each member's `request_done`."""
        for member in self.members:
            member.request_done(record)

    def attempt_failed(self, backend: str, reason: str) -> None:
        """Each member's `attempt_failed`."""
        for member in self.members:
            member.attempt_failed(backend, reason)

    def wake_checked(self, backend: str, reason: str, stage: str, restarted: bool) -> None:
        """Each member's `wake_checked`."""
        for member in self.members:
            member.wake_checked(backend, reason, stage, restarted)

    def wake_ready(self, backend: str, seconds: float) -> None:
        """Each member's `wake_ready`."""
        for member in self.members:
            member.wake_ready(backend, seconds)

    def flush(self, timeout_s: float) -> None:
        """Each member's `flush`, within one `timeout_s` in all."""
        end = time.monotonic() + timeout_s
        for member in self.members:
            member.flush(max(0.0, end - time.monotonic()))
