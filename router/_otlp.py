"""The OTLP/HTTP exporter behind the tracer (router/_tracing.py): spans leave from a thread.

A collector is never allowed to slow an answer down. The function flushes before it returns
(the platform freezes the container then), but once a flush has timed out the collector is
taken as stuck: later flushes return at once, until an export succeeds again. What cannot be
sent (a collector that is down, refuses, or a full queue) is counted, and said in one warning
per `REPORT_EVERY_S`, not one per request; the first export that succeeds after failures says
what was lost since the last warning.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx

from router._backends import shared_tls
from router._config import Settings

log = logging.getLogger("router.trace")

# Spans wait in memory for the exporter thread; past this many requests, new ones are dropped.
MAX_QUEUED = 512
EXPORT_TIMEOUT_S = 5.0
REPORT_EVERY_S = 60

Spans = list[dict[str, Any]]


class OtlpExporter:
    """Sends batches of spans to `<endpoint>/v1/traces` from one background thread."""

    def __init__(self, settings: Settings, resource: dict[str, Any], *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.resource = resource
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
        self._queue: list[Spans] = []
        self._busy = False
        self._thread: threading.Thread | None = None
        # A flush timed out: flushes do not wait until an export succeeds again.
        self.stuck = False
        # Since start (for tests and the bench), and since the last warning.
        self.dropped_spans = 0
        self._unsaid = {"failed_exports": 0, "dropped_spans": 0}
        self._said_at: float | None = None

    def submit(self, spans: Spans) -> None:
        """Queue one request's spans for the exporter thread (dropped when the queue is full)."""
        with self._cond:
            if len(self._queue) >= MAX_QUEUED:
                # A collector that is down must not grow the process without bound.
                self._lost("queue full", len(spans), failed=False)
                return
            self._queue.append(spans)
            if self._thread is None:
                self._thread = threading.Thread(target=self._export, name="router-traces",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` until every queued span has been sent (or refused); at once
        while the collector is stuck."""
        with self._cond:
            if self.stuck or timeout_s <= 0:
                return
            if not self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s):
                self.stuck = True

    def _export(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch, self._queue = self._queue, []
                self._busy = True
            spans = [span for spans in batch for span in spans]
            failure = self._send(spans)
            with self._cond:
                self._busy = False
                if failure is None:
                    self._recovered()
                else:
                    self._lost(failure, len(spans), failed=True)
                self._cond.notify_all()

    def _send(self, spans: Spans) -> str | None:
        """Post one batch; None when the collector took it, else why not (no URL in it)."""
        body = {"resourceSpans": [{"resource": self.resource, "scopeSpans": [
            {"scope": {"name": "chat-router"}, "spans": spans}]}]}
        try:
            response = self._client.post("/v1/traces", json=body)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return f"status {response.status_code}" if response.status_code >= 300 else None

    def _lost(self, reason: str, spans: int, *, failed: bool) -> None:
        # Called with the condition held.
        self.dropped_spans += spans
        self._unsaid["dropped_spans"] += spans
        self._unsaid["failed_exports"] += failed
        now = time.monotonic()
        if self._said_at is None or now - self._said_at >= REPORT_EVERY_S:
            # One line for an interval of many requests' batches (a batch mixes requests):
            # no one request's id fits it, so it carries counts and a reason, no ids
            # (tests/router/test_tracing.py pins its fields).
            log.warning("traces not exported", extra={"fields": {
                "reason": reason, **self._unsaid, "interval_s": REPORT_EVERY_S}})
            self._unsaid = {"failed_exports": 0, "dropped_spans": 0}
            self._said_at = now

    def _recovered(self) -> None:
        # Called with the condition held, after an export succeeded.
        self.stuck = False
        if any(self._unsaid.values()):
            log.warning("traces exported again", extra={"fields": dict(self._unsaid)})
        self._unsaid = {"failed_exports": 0, "dropped_spans": 0}
        self._said_at = None
