"""An OTLP/HTTP trace receiver on loopback: what an OpenTelemetry collector's HTTP port does.

It takes `POST /v1/traces` in OTLP's JSON encoding (`application/json`, what the router sends;
ids in hex, int64 as strings), answers 200 `{}` as a collector does, and keeps every span with
its resource's service name. Set `status` to answer otherwise (a collector that fails), or
`hanging` to hold every request unanswered until it is cleared (a collector that hangs).
`HeaderTap` wraps a fake backend to record the trace headers of each request it got.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.asgi import read_request, serve_lifespan


def _plain(value: dict[str, Any]) -> Any:
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in value:
            return value[kind]
    if "intValue" in value:
        return int(value["intValue"])
    return value


@dataclass
class Span:
    """One received span, its attributes as plain values."""

    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int


@dataclass
class OtlpReceiver:
    """An ASGI app; `spans` holds what it received, `raw` each request body as text."""

    spans: list[Span] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    status: int = 200
    hanging: threading.Event = field(default_factory=threading.Event)
    held: int = 0  # requests that arrived while hanging
    gave_up: threading.Event = field(default_factory=threading.Event)  # a held sender left

    def wait_for(self, count: int, timeout_s: float) -> list[Span]:
        """Block until `count` spans arrived (or the timeout); return them."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.spans) >= count, timeout_s)
            return list(self.spans)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body, headers = await read_request(scope, receive)
        ctype = headers.get("content-type", "")
        if scope["path"] != "/v1/traces" or scope["method"] != "POST":
            await _answer(send, 404, b"{}")
            return
        if not ctype.startswith("application/json"):
            await _answer(send, 415, b"{}")  # protobuf is OTLP's other encoding: not ours
            return
        if self.hanging.is_set():
            await self._hold(receive)
        if self.status != 200:
            await _answer(send, self.status, b'{"message": "collector failure"}')
            return
        data = json.loads(body)
        spans = [span for resource in data.get("resourceSpans", [])
                 for span in _spans(resource)]
        with self.arrived:
            self.raw.append(body.decode("utf-8", "replace"))
            self.content_types.append(ctype)
            self.spans.extend(spans)
            self.arrived.notify_all()
        await _answer(send, 200, b"{}")


    async def _hold(self, receive: Any) -> None:
        # Until the test clears `hanging`; a sender that gives up first is noted.
        self.held += 1

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.gave_up.set()

        watcher = asyncio.create_task(watch())
        try:
            while self.hanging.is_set():
                await asyncio.sleep(0.01)
        finally:
            watcher.cancel()


def _spans(resource: dict[str, Any]) -> list[Span]:
    attrs = {a["key"]: _plain(a["value"])
             for a in resource.get("resource", {}).get("attributes", [])}
    return [Span(str(attrs.get("service.name", "")), s["traceId"], s["spanId"],
                 s.get("parentSpanId", ""), s["name"], int(s.get("kind", 0)),
                 int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"]),
                 {a["key"]: _plain(a["value"]) for a in s.get("attributes", [])},
                 int(s.get("status", {}).get("code", 0)))
            for scope in resource.get("scopeSpans", []) for s in scope.get("spans", [])]


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class HeaderTap:
    """Wraps an ASGI app; records each HTTP request's `traceparent` and `tracestate` headers
    (or '')."""

    app: Any
    traceparents: list[str] = field(default_factory=list)
    tracestates: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.traceparents.append(headers.get("traceparent", ""))
            self.tracestates.append(headers.get("tracestate", ""))
        await self.app(scope, receive, send)
