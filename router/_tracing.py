"""Traces in OpenTelemetry's GenAI conventions, sent over OTLP/HTTP as JSON.

Loaded only when OTEL_EXPORTER_OTLP_ENDPOINT is set (router/_app.py imports it then), so the
`ask` function's cold start never pays for it. It needs no OpenTelemetry SDK: OTLP/HTTP's JSON
encoding is a documented part of the protocol, and the function already carries httpx. That
keeps the function's artifact as it is (the SDK and its protobuf runtime would add megabytes,
and tens of milliseconds of imports to a cold start with tracing on).

One span per request (SERVER) and one per request sent to a backend (CLIENT, its child), whose
id goes on to the backend in `traceparent`, with the caller's `tracestate`; a caller that marks
its trace not sampled is honoured (nothing exported, the flag passed on). The exporter
(router/_otlp.py) never lets a collector that hangs slow the answers down. Attributes name
routes, backends, models, reasons, counts and statuses: never a prompt, a token, a key or a URL.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from router._config import Settings
from router._otlp import OtlpExporter
from router._record import RequestRecord
from router._telemetry import TRACE, Observer

SERVER, CLIENT = 2, 3  # OTLP's SpanKind
STATUS_ERROR = 2
CHAT_PATHS = frozenset({"/v1/chat/completions", "/ai/chat", "/ai/generate"})
EMBEDDING_PATHS = frozenset({"/v1/embeddings", "/ai/embeddings"})


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
    """One request's trace: the caller's context (W3C `traceparent`, `tracestate`), whether
    it is sampled (exported), and its attempts."""

    trace_id: str
    parent_span_id: str | None
    sampled: bool = True
    state: str = ""  # the caller's `tracestate`, passed on unchanged
    span_id: str = field(default_factory=lambda: os.urandom(8).hex())
    start_ns: int = field(default_factory=time.time_ns)
    attempts: list[SpanTimes] = field(default_factory=list)

    def outgoing(self, backend: str) -> dict[str, str]:
        """Start an attempt span (ending the one before) and give the headers that pass it on
        to the backend: `traceparent` (the caller's sampling decision kept) and `tracestate`."""
        self.end_attempt(None)
        attempt = SpanTimes(os.urandom(8).hex(), backend, len(self.attempts) + 1,
                            time.time_ns())
        self.attempts.append(attempt)
        headers = {"traceparent": f"00-{self.trace_id}-{attempt.span_id}-"
                                  f"{'01' if self.sampled else '00'}"}
        if self.state:
            headers["tracestate"] = self.state
        return headers

    def end_attempt(self, error: str | None) -> None:
        """End the attempt in flight, if any, with its failure reason (None: no failure)."""
        if self.attempts and not self.attempts[-1].end_ns:
            self.attempts[-1].end_ns = time.time_ns()
            self.attempts[-1].error = error


# W3C Trace Context: version-traceid-parentid-flags, lower-case hex. Version ff is invalid; a
# later version may append fields after a dash, and is read by its first four.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?")
# tracestate: list members of visible ASCII; at most 32, and 512 characters are passed on.
_STATE_MEMBERS, _STATE_CHARS, _STATE_MEMBER_CHARS = 32, 512, 128


def trace_from(headers: Mapping[str, str]) -> RequestTrace:
    """A new request trace, continuing the caller's `traceparent` (and `tracestate`) when it
    is valid under W3C Trace Context; otherwise a new trace of our own, sampled."""
    match = _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip(" \t"))
    if (match is None or match["version"] == "ff" or match["trace"] == "0" * 32
            or match["parent"] == "0" * 16 or (match["version"] == "00" and match["rest"])):
        return RequestTrace(os.urandom(16).hex(), None)
    sampled = bool(int(match["flags"], 16) & 1)  # the only flag version 00 defines
    return RequestTrace(match["trace"], match["parent"], sampled=sampled,
                        state=_tracestate(headers.get("tracestate", "")))


def _tracestate(value: str) -> str:
    """The caller's `tracestate` to pass on: empty when malformed; past 512 characters, members
    over 128 characters go first, then members from the end (as W3C allows)."""
    if not value or not all(" " <= char <= "~" for char in value):
        return ""
    members = [item.strip() for item in value.split(",") if item.strip()]
    if len(members) > _STATE_MEMBERS or any("=" not in item for item in members):
        return ""
    if len(",".join(members)) > _STATE_CHARS:
        members = [item for item in members if len(item) <= _STATE_MEMBER_CHARS]
    while len(",".join(members)) > _STATE_CHARS:
        members.pop()
    return ",".join(members)


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in OTLP's JSON
    return {"stringValue": str(value)}


def _attributes(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in values.items()
            if value is not None]


def operation(path: str) -> str | None:
    """gen_ai.operation.name for one of our paths, or None for the others."""
    path = path.rstrip("/")
    return "chat" if path in CHAT_PATHS else ("embeddings" if path in EMBEDDING_PATHS else None)


class Tracer(Observer):
    """The router's observer that turns each request into spans, exported in the background."""

    active = True

    def __init__(self, settings: Settings, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        # Each deployment's served model, by its configured name.
        self.models = {d.name: d.model for d in settings.deployments}
        self.exporter = OtlpExporter(settings, {"attributes": _attributes({
            "service.name": settings.otel_service_name, "telemetry.sdk.language": "python"})},
            transport=transport)

    def request_started(self, headers: Mapping[str, str]) -> None:
        """Start the request's trace, continuing the caller's `traceparent`."""
        TRACE.set(trace_from(headers))

    def attempt_failed(self, backend: str, reason: str) -> None:
        """End the attempt in flight with the reason it failed."""
        trace = TRACE.get()
        if trace is not None:
            trace.end_attempt(reason)

    def request_done(self, record: RequestRecord) -> None:
        """Make the request's spans and hand them to the exporter thread."""
        trace = TRACE.get()
        if not isinstance(trace, RequestTrace):
            return
        TRACE.set(None)
        trace.end_attempt(None)
        if not trace.sampled:
            return  # the caller decided: not recorded, though its context went on
        # The model each backend named in its answer (its attempts' `gen_ai.response.model`).
        named = {hop.backend: hop.model for hop in record.hops if hop.model}
        self.exporter.submit([self._request_span(trace, record),
                              *(self._attempt_span(trace, attempt, operation(record.path),
                                                   named.get(attempt.backend))
                                for attempt in trace.attempts)])

    def flush(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` until the spans have left (at once while the collector is
        stuck: see router/_otlp.py)."""
        self.exporter.flush(timeout_s)

    def _request_span(self, trace: RequestTrace, record: RequestRecord) -> dict[str, Any]:
        op = operation(record.path)
        # GenAI conventions: the request's model is the one the caller asked for (`llm`,
        # `auto`), the response's the one the answering backend named in its answer.
        model = record.model
        span: dict[str, Any] = {
            "traceId": trace.trace_id, "spanId": trace.span_id,
            "name": f"{op} {model}" if op and model else (op or record.method),
            "kind": SERVER, "startTimeUnixNano": str(trace.start_ns),
            "endTimeUnixNano": str(trace.start_ns + int(record.duration_s * 1e9)),
            "attributes": _attributes({
                "gen_ai.operation.name": op, "gen_ai.provider.name": "openai" if op else None,
                "gen_ai.request.model": model,
                "gen_ai.response.model": record.response_model,
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "http.request.method": record.method,
                "http.response.status_code": record.status,
                "error.type": record.code, "chat.request_id": record.request_id,
                "chat.route": record.route, "chat.backend": record.backend,
                "chat.fallback": record.fallback, "chat.attempts": record.attempts,
                "chat.streamed": record.streamed})}
        if trace.parent_span_id:
            span["parentSpanId"] = trace.parent_span_id
        if record.status >= 500 or (record.streamed and record.code):
            span["status"] = {"code": STATUS_ERROR}
        return span

    def _attempt_span(self, trace: RequestTrace, attempt: SpanTimes, op: str | None,
                      answered_by: str | None) -> dict[str, Any]:
        model = self.models.get(attempt.backend)
        span: dict[str, Any] = {
            "traceId": trace.trace_id, "spanId": attempt.span_id,
            "parentSpanId": trace.span_id, "name": f"{op or 'request'} {model}",
            "kind": CLIENT, "startTimeUnixNano": str(attempt.start_ns),
            "endTimeUnixNano": str(max(attempt.end_ns, attempt.start_ns)),
            "attributes": _attributes({
                "gen_ai.operation.name": op, "gen_ai.provider.name": "openai" if op else None,
                "gen_ai.request.model": model, "gen_ai.response.model": answered_by,
                "chat.backend": attempt.backend,
                "chat.attempt": attempt.number, "error.type": attempt.error})}
        if attempt.error:
            span["status"] = {"code": STATUS_ERROR}
        return span
