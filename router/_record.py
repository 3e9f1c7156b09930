"""What happened to one request: the one record, made while the request runs and read by
everything that tells of it.

The edge (router/_app.py) makes it when a request arrives; the endpoint adds the route; the
fallback loop (router/_fallback.py) adds a `Hop` for each backend it turns to and fills it in
as that backend answers or fails; the edge adds the status. Then the record is rendered, once
each: into the answer's `X-Chat-*` headers (and a true stream's `x_chat`), into the request's
log line, and for the observers (metrics, traces), which read its fields. Nothing reads them
back out of headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(slots=True)
class Hop:
    """One backend the loop turned to for this request (when a tier holds several
    deployments, one deployment): what went out to it, and what came of it."""

    backend: str
    # Requests that went out to it: the first, and any retries.
    sent: int = 0
    # Why it did not answer (the words of `X-Chat-Fallback`); None while it answers, and once
    # it has answered. A stream can have both: it answered in part, then failed.
    reason: str | None = None
    # Whether (part of) the answer the client has came from it.
    answered: bool = False
    # Passed by without a request (its circuit open, or the caller's GPU budget spent).
    skipped: bool = False
    # The backend's own usage object, when it sent one; and the chunks it sent that carried
    # tokens (a chunk is about one token), which stand in for it when it did not.
    usage: dict[str, Any] | None = None
    produced: int = 0
    # The model it named in its answer (its first chunk's, or its JSON's `model`).
    model: str | None = None

    def count(self, _attempt: object) -> None:
        """The retry layer's hook: one more request went out to this backend."""
        self.sent += 1

    def add_usage(self, usage: Mapping[str, Any] | None, produced: int = 0) -> None:
        """What this backend produced: its usage object, if it sent one, and the chunks that
        carried tokens."""
        if isinstance(usage, Mapping):
            self.usage = dict(usage)
        self.produced = produced

    def tokens(self) -> dict[str, Any] | None:
        """Its token counts: its own usage, else its token-bearing chunks as completion tokens
        (a stream that ended before its usage came); None when it produced nothing."""
        if self.usage is not None:
            return self.usage
        if self.produced:
            return {"prompt_tokens": 0, "completion_tokens": self.produced,
                    "total_tokens": self.produced}
        return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def summed(usages: list[dict[str, Any]]) -> dict[str, int] | None:
    """The three token counts of several usage objects added up (None when there are none)."""
    if not usages:
        return None
    return {key: sum(_count(usage.get(key)) for usage in usages) for key in USAGE_KEYS}


@dataclass(slots=True)
class RequestRecord:
    """One request, as an operator counts it: never a prompt, token, key or URL."""

    method: str
    path: str
    request_id: str = ""
    # The request's trace id (W3C), when it is traced: its log lines carry it, and its span
    # carries `request_id`, so one id leads from either to the other.
    trace_id: str | None = None
    # The model the caller asked for (`auto`, `llm`, `small`, an alias): not the backend's.
    model: str | None = None
    # The policy's choice (`X-Chat-Route`) and why (`X-Chat-Route-Reason`).
    route: str | None = None
    route_reason: str | None = None
    # A fallback on purpose, with no backend failing (`off_hours`: the Space sleeps then).
    on_purpose: str | None = None
    hops: list[Hop] = field(default_factory=list)
    status: int = 0
    # Our error code for a refusal or failure (`rate_limited`, `deadline_exceeded`...); for a
    # true stream (status 200, its headers long gone), the error event that ended it.
    code: str | None = None
    streamed: bool = False
    # Seconds from the request's arrival to its whole answer (a stream's last chunk).
    duration_s: float = 0.0
    # A true stream's first chunk (the first token a client sees), from the request's arrival.
    first_token_s: float | None = None

    def turn_to(self, backend: str) -> Hop:
        """A new hop: the loop sends this request to `backend`."""
        hop = Hop(backend)
        self.hops.append(hop)
        return hop

    def skip(self, backend: str, reason: str) -> None:
        """The loop passed `backend` by without sending it anything (circuit open, quota)."""
        self.hops.append(Hop(backend, reason=reason, skipped=True))

    @property
    def backend(self) -> str | None:
        """The backend the answer (the latest part of it, in a stream) came from."""
        answered = [hop.backend for hop in self.hops if hop.answered]
        return answered[-1] if answered else None

    @property
    def response_model(self) -> str | None:
        """The model the backend that answered (its latest part, in a stream) named."""
        named = [hop.model for hop in self.hops if hop.answered and hop.model]
        return named[-1] if named else None

    @property
    def fallback(self) -> str | None:
        """`X-Chat-Fallback`. For an answer (in a stream, part of one): why the backends
        before the last one asked did not give it, the first reason (or the purpose, when none
        failed). For a failure: why the last try failed."""
        if not any(hop.answered for hop in self.hops):
            reasons = self.reasons()
            return reasons[-1] if reasons else None
        asked = [index for index, hop in enumerate(self.hops) if not hop.skipped]
        before = self.hops[:asked[-1]] if asked else self.hops
        reasons = [hop.reason for hop in before if hop.reason]
        return reasons[0] if reasons else self.on_purpose

    def reasons(self) -> list[str]:
        """Every hop's failure reason, in order."""
        return [hop.reason for hop in self.hops if hop.reason]

    @property
    def attempts(self) -> int:
        """Requests sent to backends in all: tries, retries and fallbacks."""
        return sum(hop.sent for hop in self.hops)

    def usage(self, *, answered_only: bool = False) -> dict[str, int] | None:
        """Tokens summed over every backend that produced any (what the request cost), or
        over those whose words the answer holds."""
        return summed([tokens for hop in self.hops if hop.answered or not answered_only
                       if (tokens := hop.tokens()) is not None])

    @property
    def prompt_tokens(self) -> int | None:
        """Prompt tokens, summed over the backends (None when none counted)."""
        usage = self.usage()
        return None if usage is None else usage["prompt_tokens"]

    @property
    def completion_tokens(self) -> int | None:
        """Completion tokens, summed over the backends (None when none counted)."""
        usage = self.usage()
        return None if usage is None else usage["completion_tokens"]

    def headers(self) -> dict[str, str]:
        """The answer's `X-Chat-*` headers (rendered once, at the edge)."""
        headers: dict[str, str] = {}
        if self.route is not None:
            headers["x-chat-route"] = self.route
            headers["x-chat-route-reason"] = self.route_reason or ""
        backend = self.backend
        if backend is not None:
            headers["x-chat-backend"] = backend
        if self.hops:
            headers["x-chat-attempts"] = str(self.attempts)
        fallback = self.fallback
        if fallback is not None:
            headers["x-chat-fallback"] = fallback
        return headers

    def x_chat(self) -> dict[str, Any]:
        """A stream's `x_chat` object, on its last chunk (or its error event)."""
        return {"backend": self.backend or "", "fallback": self.fallback,
                "attempts": self.attempts, "route": self.route}

    def ids(self) -> dict[str, str]:
        """The ids every log line of this request carries: its request id, and its trace id
        when it is traced."""
        if self.trace_id is None:
            return {"request_id": self.request_id}
        return {"request_id": self.request_id, "trace_id": self.trace_id}

    def log_fields(self) -> dict[str, Any]:
        """The request's log line (typed: `attempts` is a number)."""
        return {**self.ids(), "method": self.method, "path": self.path[:64],
                "status": self.status, "route": self.route, "route_reason": self.route_reason,
                "backend": self.backend, "fallback": self.fallback,
                "attempts": self.attempts if self.hops else None, "code": self.code,
                "latency_ms": round(self.duration_s * 1000.0, 1)}
