"""Traces in OpenTelemetry's GenAI conventions, sent over OTLP/HTTP as JSON.

Loaded only when OTEL_EXPORTER_OTLP_ENDPOINT is set (router/_app.py imports it then), so the
`ask` function's cold start never pays for it. It needs no OpenTelemetry SDK: OTLP/HTTP's JSON
encoding is a documented part of the protocol, and the function already carries httpx. That
keeps the function's artifact as it is (the SDK and its protobuf runtime would add megabytes,
and tens of milliseconds of imports to a cold start with tracing on).

One span per request (SERVER) and one per request sent to a backend (CLIENT, its child), whose
id goes on to the backend in `traceparent`. Attributes name routes, backends, models, reasons,
counts and statuses: never a prompt, a token, a key or a URL.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from router._backends import shared_tls
from router._config import Settings
from router._record import RequestRecord
from router._telemetry import TRACE, Observer

log = logging.getLogger("router.trace")

SERVER, CLIENT = 2, 3  # OTLP's SpanKind
STATUS_ERROR = 2
# Spans wait in memory for the exporter thread; past this many requests, new ones are dropped.
MAX_QUEUED = 512
EXPORT_TIMEOUT_S = 5.0
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


def trace_from(headers: Mapping[str, str]) -> RequestTrace:
    """A new request trace, continuing the caller's `traceparent` when it is well formed."""
    match = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        return RequestTrace(match.group(1), match.group(2))
    return RequestTrace(os.urandom(16).hex(), None)


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
        self.resource = {"attributes": _attributes({
            "service.name": settings.otel_service_name, "telemetry.sdk.language": "python"})}
        headers = {"content-type": "application/json"}
        for item in settings.otel_exporter_otlp_headers.split(","):
            key, sep, value = item.partition("=")
            if sep and key.strip():
                headers[key.strip().lower()] = value.strip()
        self._client = httpx.Client(
            base_url=settings.otel_exporter_otlp_endpoint, headers=headers,
            timeout=EXPORT_TIMEOUT_S, trust_env=False,
            # The backends' TLS context: loading the CA bundle again would cost ~20 ms.
            transport=transport or httpx.HTTPTransport(retries=0, verify=shared_tls()))
        self._cond = threading.Condition()
        self._queue: list[list[dict[str, Any]]] = []
        self._busy = False
        self._thread: threading.Thread | None = None

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
        spans = [self._request_span(trace, record),
                 *(self._attempt_span(trace, attempt, operation(record.path))
                   for attempt in trace.attempts)]
        with self._cond:
            if len(self._queue) >= MAX_QUEUED:
                return  # a collector that is down must not grow the process without bound
            self._queue.append(spans)
            if self._thread is None:
                self._thread = threading.Thread(target=self._export, name="router-traces",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` until every queued span has been sent (or refused)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def _request_span(self, trace: RequestTrace, record: RequestRecord) -> dict[str, Any]:
        op = operation(record.path)
        model = self.models.get(record.backend or "")
        span: dict[str, Any] = {
            "traceId": trace.trace_id, "spanId": trace.span_id,
            "name": f"{op} {model}" if op and model else (op or record.method),
            "kind": SERVER, "startTimeUnixNano": str(trace.start_ns),
            "endTimeUnixNano": str(trace.start_ns + int(record.duration_s * 1e9)),
            "attributes": _attributes({
                "gen_ai.operation.name": op, "gen_ai.provider.name": "openai" if op else None,
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "http.request.method": record.method,
                "http.response.status_code": record.status,
                "error.type": record.code,
                "chat.route": record.route, "chat.backend": record.backend,
                "chat.fallback": record.fallback, "chat.attempts": record.attempts,
                "chat.streamed": record.streamed})}
        if trace.parent_span_id:
            span["parentSpanId"] = trace.parent_span_id
        if record.status >= 500 or (record.streamed and record.code):
            span["status"] = {"code": STATUS_ERROR}
        return span

    def _attempt_span(self, trace: RequestTrace, attempt: SpanTimes, op: str | None
                      ) -> dict[str, Any]:
        model = self.models.get(attempt.backend)
        span: dict[str, Any] = {
            "traceId": trace.trace_id, "spanId": attempt.span_id,
            "parentSpanId": trace.span_id, "name": f"{op or 'request'} {model}",
            "kind": CLIENT, "startTimeUnixNano": str(attempt.start_ns),
            "endTimeUnixNano": str(max(attempt.end_ns, attempt.start_ns)),
            "attributes": _attributes({
                "gen_ai.operation.name": op, "gen_ai.provider.name": "openai" if op else None,
                "gen_ai.request.model": model, "chat.backend": attempt.backend,
                "chat.attempt": attempt.number, "error.type": attempt.error})}
        if attempt.error:
            span["status"] = {"code": STATUS_ERROR}
        return span

    def _export(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                self._send([span for spans in batch for span in spans])
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, spans: list[dict[str, Any]]) -> None:
        body = {"resourceSpans": [{"resource": self.resource, "scopeSpans": [
            {"scope": {"name": "chat-router"}, "spans": spans}]}]}
        try:
            response = self._client.post("/v1/traces", json=body)
        except httpx.HTTPError as exc:
            log.warning("traces not exported", extra={"fields": {
                "exc_type": type(exc).__name__, "spans": len(spans)}})
            return
        if response.status_code >= 300:
            log.warning("traces refused", extra={"fields": {
                "status": response.status_code, "spans": len(spans)}})
