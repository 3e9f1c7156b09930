"""What the router tells an observer about each request: one frozen record, and the wakes.

The runtime only calls these hooks; it counts nothing itself. The service installs its
Prometheus metrics (router_service/_metrics.py) as the observer; the function installs none,
so its cold start and its answers pay for nothing but one no-op call per request.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, as an operator counts it: never a prompt, token, key or URL."""

    method: str
    path: str
    status: int
    route: str | None
    backend: str | None
    fallback: str | None
    attempts: int
    # Seconds from the request's arrival to its whole answer (a stream's last chunk).
    duration_s: float
    # Our error code for a refusal or failure (`rate_limited`, `deadline_exceeded`...).
    code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    streamed: bool = False
    # A true stream's first chunk (the first token a client sees), from the request's arrival.
    first_token_s: float | None = None


@dataclass(slots=True)
class SpanTimes:
    """One request sent to a backend, as a span: its ids, times (Unix ns) and verdict."""

    span_id: str
    backend: str
    number: int
    start_ns: int
    end_ns: int = 0
    error: str | None = None


@dataclass(slots=True)
class RequestTrace:
    """One request's trace: the caller's context (W3C `traceparent`), and its attempts."""

    trace_id: str
    parent_span_id: str | None
    span_id: str = field(default_factory=lambda: os.urandom(8).hex())
    start_ns: int = field(default_factory=time.time_ns)
    attempts: list[SpanTimes] = field(default_factory=list)

    def outgoing(self, backend: str) -> str:
        """Start an attempt span (ending the one before) and give the `traceparent` that
        passes it on to the backend."""
        self.end_attempt(None)
        attempt = SpanTimes(os.urandom(8).hex(), backend, len(self.attempts) + 1,
                            time.time_ns())
        self.attempts.append(attempt)
        return f"00-{self.trace_id}-{attempt.span_id}-01"

    def end_attempt(self, error: str | None) -> None:
        """End the attempt in flight, if any, with its failure reason (None: no failure)."""
        if self.attempts and not self.attempts[-1].end_ns:
            self.attempts[-1].end_ns = time.time_ns()
            self.attempts[-1].error = error


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
# The request being traced, in this task (each request runs in its own asyncio task).
TRACE: ContextVar[RequestTrace | None] = ContextVar("router_trace", default=None)


def trace_from(headers: Mapping[str, str]) -> RequestTrace:
    """A new request trace, continuing the caller's `traceparent` when it is well formed."""
    match = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        return RequestTrace(match.group(1), match.group(2))
    return RequestTrace(os.urandom(16).hex(), None)


def trace_hook(backend: str) -> Callable[[httpx.Request], Awaitable[None]]:
    """An httpx request hook for one backend's client: while a request is traced, each
    request to the backend is an attempt span, and carries `traceparent` on."""

    async def inject(request: httpx.Request) -> None:
        trace = TRACE.get()
        if trace is not None:
            request.headers["traceparent"] = trace.outgoing(backend)

    return inject


class Observer:
    """The hooks the router calls; this base does nothing (the function's default)."""

    active = False  # the router skips building records for an observer that ignores them

    def request_started(self, headers: Mapping[str, str]) -> None:
        """A request arrived (its headers); called only when `active`."""

    def request_done(self, record: RequestRecord) -> None:
        """A request was answered whole (a stream: after its last chunk)."""

    def attempt_failed(self, backend: str, reason: str) -> None:
        """A backend failed the request (after any retries): why, as `X-Chat-Fallback` says."""

    def wake_checked(self, reason: str, stage: str, restarted: bool) -> None:
        """A wake of the Space was tried: the stage seen (`error` when the Hub failed)."""

    def flush(self, timeout_s: float) -> None:
        """Send what is buffered, waiting at most `timeout_s` (the function, before it
        returns: the platform freezes the container then)."""


class Observers(Observer):
    """Several observers (the service's metrics and a tracer), called in turn."""

    def __init__(self, members: list[Observer]) -> None:
        self.members = members
        self.active = any(member.active for member in members)

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

    def wake_checked(self, reason: str, stage: str, restarted: bool) -> None:
        """Each member's `wake_checked`."""
        for member in self.members:
            member.wake_checked(reason, stage, restarted)

    def flush(self, timeout_s: float) -> None:
        """Each member's `flush`, within one `timeout_s` in all."""
        end = time.monotonic() + timeout_s
        for member in self.members:
            member.flush(max(0.0, end - time.monotonic()))


def usage_counts(usage: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of an OpenAI `usage` object, or Nones when absent."""
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None)


def error_code(status: int, body: str) -> str | None:
    """Our JSON error's `code` for an error answer (the bodies are small), else None."""
    if status < 400 or not body.startswith("{"):
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def int_or_zero(value: str | None) -> int:
    """A header's integer (x-chat-attempts), or 0."""
    return int(value) if value and value.isdigit() else 0
