"""The router: per-container state and the dispatch of one request to its endpoint."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace

import httpx

from router._access import Access, Admission
from router._backends import Backend, BackendName, backend_configs
from router._config import Settings
from router._cors import Cors
from router._deadline import Deadline
from router._endpoints import Endpoints
from router._errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    RouterError,
)
from router._event_loop import LoopThread
from router._fallback import FallbackEngine
from router._http_types import (
    DEADLINE_HEADER,
    WARMUP_HEADER,
    Edge,
    Exchange,
    HttpRequest,
    HttpResponse,
)
from router._policy import Policy
from router._quota import Quotas
from router._record import RequestRecord
from router._status import error_response
from router._telemetry import TRACE, Observer, Observers
from router._wake import SpaceHub, wakers

log = logging.getLogger("router.request")


Handler = Callable[[Exchange], Awaitable[HttpResponse]]
# The most the function's answer waits for a Space wake still in flight (WAKE_GRACE_MS is
# capped by this): the platform freezes the container once `main` returns.
WAKE_JOIN_CAP_S = 0.25


class ChatRouter:
    """Everything a warm container keeps: settings, clients, breakers, the wake gate."""

    def __init__(self, settings: Settings, *,
                 transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
                 hub: SpaceHub | None = None) -> None:
        self.settings = settings
        transports = transports or {}
        self.backends: dict[BackendName, Backend] = {
            name: Backend(config, connect_timeout_s=settings.connect_timeout_ms / 1000.0,
                          transport=transports.get(name))
            for name, config in backend_configs(settings).items()
        }
        self.engine = FallbackEngine(settings, self.backends, wakers(settings, hub))
        self.policy = Policy(settings)
        self.cors = Cors(settings)
        self.access = Access(settings)
        self.quotas = Quotas(settings)
        self.endpoints = Endpoints(settings, self.engine, self.policy, self.quotas)
        self.loop = LoopThread()
        self.last_wake_wait_s = 0.0
        # The function's default does nothing; the service installs its metrics (`observe`).
        self.observer: Observer = Observer()
        if settings.otel_exporter_otlp_endpoint:
            # Loaded only when traces are exported: the cold start of `ask` never pays for it.
            from router._tracing import Tracer

            self.observe(Tracer(settings))
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self.endpoints.chat_completions,
            ("POST", "/v1/embeddings"): self.endpoints.embeddings,
            ("GET", "/v1/models"): self.endpoints.models,
            ("POST", "/ai/chat"): self.endpoints.ai_chat,
            ("POST", "/ai/generate"): self.endpoints.ai_generate,
            ("POST", "/ai/embeddings"): self.endpoints.ai_embeddings,
            ("GET", "/health"): self.health,
        }

    def observe(self, observer: Observer) -> None:
        """Tell `observer` (too) about every request and every wake from now on."""
        current = self.observer
        members = current.members if isinstance(current, Observers) else [current]
        self.observer = Observers([*(m for m in members if m.active), observer])
        self.engine.observer = self.observer
        for waker in self.engine.wakers.values():
            waker.on_checked = self.observer.wake_checked
            waker.on_ready = self.observer.wake_ready if self.observer.times_wakes else None

    def handle(self, request: HttpRequest, edge: Edge) -> HttpResponse:
        """The function's path: answer on the container's loop, then give a wake still in
        flight a bounded moment to leave before the platform freezes the container."""
        response = self.loop.run(self.handle_async(request, edge))
        # Kept for the bench (bench/sleeping.py): what the last answer waited for a wake.
        self.last_wake_wait_s = self.engine.settle_wakes(
            min(self.settings.wake_grace_ms / 1000.0, WAKE_JOIN_CAP_S))
        if self.observer.active:
            self.observer.flush(WAKE_JOIN_CAP_S)  # the spans leave before the freeze, too
        return response

    async def handle_async(self, request: HttpRequest, edge: Edge) -> HttpResponse:
        """Answer one request, its credential and quota checked here; never raises, never
        answers after the deadline."""
        return await self._answer(request, edge, None)

    async def admit(self, head: HttpRequest) -> Admission | HttpResponse:
        """The service's check of a request's headers, before a byte of its body is read: the
        route, CORS, the credential and the quota. Returns the `Admission` (then `answer` it,
        with its body), or the finished refusal."""
        if head.method == "OPTIONS" or head.header(WARMUP_HEADER):
            return Admission(head, None, self.access)  # answered from the headers alone
        record = RequestRecord(head.method, head.path, uuid.uuid4().hex[:16])
        started = time.monotonic()
        # Traced from here: a request refused on its headers (401, 429) is a span too, and
        # one let in keeps this trace (`answer` runs in this context) from its arrival on.
        self._trace(head, record)
        try:
            if self._handler(head) == self.health:
                return Admission(head, None, self.access)
            return Admission(head, await self._authorize(head), self.access)
        except Exception as exc:
            return self._finish(head, self._refusal(exc, record), record, started)

    def refuse(self, head: HttpRequest, error: RouterError) -> HttpResponse:
        """A request refused at the edge (a body over the cap, or one that cannot be read):
        answered, logged, counted and traced like every other refusal (in the trace `admit`
        started, if it was let in on its headers)."""
        record = RequestRecord(head.method, head.path, uuid.uuid4().hex[:16])
        self._trace(head, record)
        return self._finish(head, self._refusal(error, record), record, time.monotonic())

    def refuse_now(self, head: HttpRequest, error: RouterError) -> HttpResponse:
        """The function's edge: `refuse` (a body it cannot read), its span sent before the
        platform freezes the container."""
        response = self.refuse(head, error)
        if self.observer.active:
            self.observer.flush(WAKE_JOIN_CAP_S)
        return response

    async def answer(self, admission: Admission, body: bytes, edge: Edge) -> HttpResponse:
        """Answer a request that `admit` let in, now with its body (its quota was counted
        then, and is not again)."""
        if admission.by is not self.access:
            raise ValueError("an admission from another router")
        return await self._answer(replace(admission.request, body=body), edge, admission)

    async def _answer(self, request: HttpRequest, edge: Edge, admission: Admission | None
                      ) -> HttpResponse:
        record = RequestRecord(request.method, request.path, uuid.uuid4().hex[:16])
        started = time.monotonic()
        self._trace(request, record)
        try:
            deadline = Deadline.for_request(
                self.settings.router_deadline_ms, floor_ms=self.settings.min_deadline_ms,
                margin_ms=self.settings.deadline_margin_ms,
                edge_limit_ms=edge.time_limit_ms,
                requested_ms=_int_header(request, DEADLINE_HEADER))
            response = await self._dispatch(request, deadline, edge, record, admission)
        except Exception as exc:
            response = self._refusal(exc, record)
        return self._finish(request, response, record, started)

    def _refusal(self, exc: Exception, record: RequestRecord) -> HttpResponse:
        if isinstance(exc, RouterError):
            record.code = exc.code
            return error_response(exc)
        # The last line of defence: a bug must still give the caller our JSON, not the
        # platform's bare 502. Only the type is logged: messages may carry URLs.
        log.error("unhandled error", extra={"fields": {**record.ids(),
                                                       "exc_type": type(exc).__name__}})
        error = InternalError("the router failed; see its logs", code="internal_error")
        record.code = error.code
        return error_response(error)

    def _finish(self, request: HttpRequest, response: HttpResponse, record: RequestRecord,
                started: float) -> HttpResponse:
        # The record, rendered into the answer's headers: here, once.
        response.headers.update(record.headers())
        response.headers["x-request-id"] = record.request_id
        response.headers.update(self.cors.headers_for(request.header("origin")))
        record.status = response.status
        if response.stream is not None:
            # A true stream is logged and counted when its last chunk has gone, with the
            # record as it ended.
            record.first_token_s = time.monotonic() - started  # its first chunk is in hand
            response.stream = self._ended(response.stream, record, started)
            return response
        record.duration_s = time.monotonic() - started
        self._done(record)
        return response

    async def _ended(self, stream: AsyncIterator[str], record: RequestRecord, started: float
                     ) -> AsyncIterator[str]:
        try:
            async for text in stream:
                yield text
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            record.duration_s = time.monotonic() - started
            self._done(record)

    def _trace(self, request: HttpRequest, record: RequestRecord) -> None:
        """Tell the observers a request arrived (its trace starts, unless `admit` started it
        already), and put its trace id on its record. /health is a page's liveness poll, not
        traffic: neither traced nor counted."""
        if not self.observer.active or _is_health(request.method, request.path):
            return
        if TRACE.get() is None:
            self.observer.request_started(request.headers)
        trace = TRACE.get()
        if trace is not None:
            record.trace_id = trace.trace_id

    def _done(self, record: RequestRecord) -> None:
        log.info("request", extra={"fields": record.log_fields()})
        if self.observer.active and not _is_health(record.method, record.path):
            self.observer.request_done(record)

    async def _dispatch(self, request: HttpRequest, deadline: Deadline, edge: Edge,
                        record: RequestRecord, admission: Admission | None) -> HttpResponse:
        if request.method == "OPTIONS":
            return self.cors.preflight(request.header("origin"),
                                       request.header("access-control-request-method"))
        if request.header(WARMUP_HEADER):
            # The warmup function's ping: keep this container warm, touch no backend.
            return HttpResponse.json(200, {"warm": True})
        handler = self._handler(request)
        subject = ""
        if handler != self.health:
            # Checked (and its quota counted) here, or by `admit` before the body was read.
            admitted = admission.subject if admission is not None else None
            subject = admitted if admitted is not None else await self._authorize(request)
        return await handler(Exchange(request, subject, deadline, edge, record))

    def _handler(self, request: HttpRequest) -> Handler:
        # CORS, then the route (404, 405): all from the headers.
        self.cors.check(request.header("origin"))
        path = request.path.rstrip("/") or "/"
        handler = self.routes.get((request.method, path))
        if handler is None:
            if any(route_path == path for _, route_path in self.routes):
                raise MethodNotAllowed(f"method {request.method[:16]} is not allowed here")
            raise NotFound("no such endpoint; see the README for the paths")
        return handler

    async def _authorize(self, request: HttpRequest) -> str:
        # A key or token when configured (an Origin header proves nothing), then the quota.
        subject = self.access.subject(request)
        await self.quotas.check(subject)
        return subject

    async def health(self, ex: Exchange) -> HttpResponse:
        """Cheap liveness, never a backend call. Anyone learns whether the router is up and
        configured; which backend fails, and how quotas are counted, only a caller with a key
        or token (or anyone, when the function is open to anyone anyway)."""
        quota = self.quotas.state  # as the last count found it: /health never asks Redis
        status = "misconfigured" if quota == "misconfigured" else "ok"
        public = {"status": status, "auth": self.access.mode}
        if not self.access.may_see_details(ex.request):
            return HttpResponse.json(200, public)
        return HttpResponse.json(200, {
            **public,
            "quota": quota,
            "backends": self._deployment_health(),
            "space_configured": self.settings.has_space,
            "wake_configured": self.settings.can_wake,
        })

    def _deployment_health(self) -> dict[str, dict[str, object]]:
        """Each deployment: its tier and kind, circuit, requests in flight here, and (for a
        Space or an endpoint) its wake state. Names only: never a URL or a token."""
        engine = self.engine
        states = engine.breaker_states()
        out: dict[str, dict[str, object]] = {}
        for deployment in self.settings.deployments:
            name = deployment.name
            entry: dict[str, object] = {"tier": deployment.tier, "kind": deployment.kind,
                                        "weight": deployment.weight, "circuit": states[name],
                                        "in_flight": engine.balancer.in_flight[name]}
            if name in engine.wakers:
                entry["wake"] = engine.wakers[name].health()
            out[name] = entry
        return out

    async def aclose(self) -> None:
        """Close every backend client (on the loop that used them)."""
        for backend in self.backends.values():
            await backend.aclose()
        for waker in self.engine.wakers.values():
            waker.close()
        await self.quotas.aclose()

    def close(self) -> None:
        """The function's shutdown: close the clients on the container's loop, then the loop."""
        self.loop.run(self.aclose())
        self.loop.close()


def _is_health(method: str, path: str) -> bool:
    return method == "GET" and path.rstrip("/") == "/health"


def _int_header(request: HttpRequest, name: str) -> int | None:
    value = request.header(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"header {name} must be an integer of milliseconds",
                         code="bad_header") from None
