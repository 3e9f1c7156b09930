"""The fallback engine: try backends in order inside one deadline, and say what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router._backends import Backend, BackendConfig, BackendName
from router._breaker import CircuitBreaker
from router._classify import rejected_detail, scrub_message
from router._config import Settings
from router._deadline import Deadline
from router._errors import (
    AnswerTooLarge,
    BackendError,
    BackendRejected,
    BackendTimeout,
    BadRequest,
    CircuitOpen,
    DeadlineExceeded,
    NoBackend,
    NoTimeLeft,
    OverBudget,
    ResponseTooLarge,
    RouterError,
    SpaceSleeping,
    SpaceStarting,
)
from router._quota import SpaceBudget
from router._retry import Attempt, call_with_retries
from router._stream_read import StreamLimits, StreamOutOfTime, completion_from_chunks
from router._telemetry import Observer
from router._wake import SpaceWaker

# Space failures that mean "not running": worth a (rate-limited, stage-checked) wake.
WAKE_REASONS = frozenset({"space_sleeping", "space_starting", "timeout", "unavailable",
                          "circuit_open"})
# A backend's 4xx that is the caller's fault: answering it from another backend would not help,
# so it reaches the caller (a 404 too: a model or route the caller named). Not among them: 401
# and 403 (our own token for that backend is wrong), 408 and 429 (the backend's state).
CALLER_FAULT = frozenset(set(range(400, 500)) - {401, 403, 408, 429})
# A provider's 400 that another backend (with a larger context window) may not give.
CONTEXT_TOO_LONG = "context_length_exceeded"


@dataclass(frozen=True, slots=True)
class Call:
    """One logical request to whichever backend serves it."""

    method: str
    path: str
    body_for: Callable[[BackendConfig], dict[str, Any] | None]
    idempotent: bool
    check: Callable[[dict[str, Any], BackendName], None]
    # Ask the backend to stream, and buffer it: the first-token and stall limits then apply,
    # and a cut, stalled or malformed stream is never a "successful" truncated answer.
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer, who gave it, why the first choice did not (if so), and how many tries."""

    payload: dict[str, Any]
    backend: BackendName
    fallback: str | None
    attempts: int


def counts_against(exc: BackendError, deadline: Deadline) -> bool:
    """Whether a failed attempt is evidence against the backend (for its breaker and a wake).

    A timeout is not when the caller's own short deadline cut the attempt's budget, nor when
    no time was left to make the attempt at all, nor when the backend was still producing as
    the time ran out: otherwise any caller, or any long answer, could open a healthy backend's
    circuit for everyone.
    """
    if isinstance(exc, NoTimeLeft | StreamOutOfTime):
        return False  # no time to try, or still producing when the time ran out
    return not (isinstance(exc, BackendTimeout) and deadline.shortened)


def no_answer(reasons: Sequence[str], retry_after: float, deadline: Deadline, *,
              too_large: bool = False, budget: SpaceBudget | None = None) -> RouterError:
    """The error for a request that no backend answered: 502, 504 or 503 with Retry-After, or
    429 when the GPU budget kept it from the Space."""
    if too_large:
        return AnswerTooLarge("the answer was larger than the platform's 1 MB limit")
    if budget is not None and budget.refusal is not None:
        return budget.refusal
    if deadline.expired():
        return DeadlineExceeded("no backend answered before the deadline", reasons=tuple(reasons))
    return NoBackend("no backend is available right now",
                     retry_after_s=max(1, round(retry_after or 5)), reasons=tuple(reasons))


def rejected_error(exc: BackendRejected, settings: Settings) -> BadRequest:
    """The caller's 400: the provider's own code and message (scrubbed of every secret and
    backend host, then cut), or a generic one."""
    message = rejected_detail(exc)
    if exc.provider_message:
        message = scrub_message(exc.provider_message,
                                (*settings.secrets(), *settings.private_hosts()))
    return BadRequest(message, code=exc.provider_code or "rejected_by_backend")


class FallbackEngine:
    """Per-container: the backends, their breakers and the wake path."""

    def __init__(self, settings: Settings, backends: Mapping[BackendName, Backend],
                 waker: SpaceWaker) -> None:
        self.settings = settings
        self.backends = backends
        self.waker = waker
        self.breakers = {name: CircuitBreaker(settings.breaker_failures,
                                              settings.breaker_cooldown_s)
                         for name in backends}
        self.observer = Observer()  # the router's observers (router/_telemetry.py)

    async def run(self, order: Sequence[BackendName], call: Call, deadline: Deadline,
                  budget: SpaceBudget | None = None) -> Outcome:
        """Serve `call` from the first backend in `order` that answers within the deadline,
        and that `budget` (the caller's GPU budget) admits.

        A wake of the Space runs on its own thread and is never awaited here: the answer does
        not wait for the Hub (the function's edge gives it a bounded moment to leave).
        """
        reasons: list[str] = []
        attempts = 0
        retry_after = 0.0
        too_large = False
        for index, name in enumerate(order):
            backend = self.backends[name]
            breaker = self.breakers[name]
            is_last = index == len(order) - 1
            tried: list[Attempt] = []
            try:
                await self.admit_within(name, budget)
                payload = await self._attempt(backend, call, deadline, is_last, tried.append)
            except asyncio.CancelledError:
                breaker.release()  # the caller went away: no verdict on the backend
                raise
            except (CircuitOpen, OverBudget) as exc:
                reasons.append(exc.reason)
                retry_after = max(retry_after, exc.retry_after_s or 0.0)
                continue
            except BackendError as exc:
                attempts += len(tried)
                if isinstance(exc, BackendRejected) and exc.status in CALLER_FAULT:
                    breaker.record_success()  # the backend is fine; the request was not
                    if exc.provider_code == CONTEXT_TOO_LONG and index < len(order) - 1:
                        reasons.append(CONTEXT_TOO_LONG)  # the other may have a larger window
                        continue
                    raise rejected_error(exc, self.settings) from None
                reasons.append(exc.reason)
                too_large = isinstance(exc, ResponseTooLarge)
                if exc.retry_after_s is not None:
                    retry_after = max(retry_after, exc.retry_after_s)
                self.note_failure(name, exc, deadline)
                continue
            attempts += len(tried)
            breaker.record_success()
            return Outcome(payload, name, reasons[0] if reasons else None, attempts)
        raise no_answer(reasons, retry_after, deadline, too_large=too_large, budget=budget)

    def note_failure(self, name: BackendName, exc: BackendError, deadline: Deadline) -> None:
        """A failed attempt: count it on the backend's breaker (if it is evidence against the
        backend) and ask the Space to wake when the failure says it is not running."""
        self.observer.attempt_failed(name, exc.reason)
        breaker = self.breakers[name]
        if not counts_against(exc, deadline):
            breaker.release()
            return
        # A Space that says it is asleep or starting answers such probes in milliseconds,
        # and comes back soon after a wake: probe it sooner.
        not_ready = isinstance(exc, SpaceSleeping | SpaceStarting)
        breaker.record_failure(self.settings.space_probe_s if not_ready else None)
        self._maybe_wake(name, exc.reason)

    def admit(self, name: BackendName) -> None:
        """Raise CircuitOpen (with the seconds until its probe) when the backend is skipped
        for now; a wake is asked for then, if it is the Space."""
        breaker = self.breakers[name]
        if breaker.allow():
            return
        self._maybe_wake(name, CircuitOpen.reason)
        raise CircuitOpen(f"{name}: circuit open", backend=name, sent=False,
                          retry_after_s=breaker.retry_after_s())

    async def admit_within(self, name: BackendName, budget: SpaceBudget | None) -> None:
        """`admit`, then the caller's GPU budget: raise OverBudget when it keeps the request
        from the backend (counted only for an attempt that would really go out)."""
        self.admit(name)
        if budget is not None and not await budget.admit(name):
            self.breakers[name].release()  # a probe slot taken by `admit` goes back unused
            raise OverBudget(f"{name}: over the GPU budget", backend=name, sent=False)

    def reserve_s(self, deadline: Deadline, is_last: bool) -> float:
        """Time kept for the next backend: never more than half of what is left."""
        return 0.0 if is_last else min(self.settings.fallback_reserve_ms / 1000.0,
                                       deadline.remaining() / 2)

    async def _attempt(self, backend: Backend, call: Call, deadline: Deadline, is_last: bool,
                       on_attempt: Callable[[Attempt], None]) -> dict[str, Any]:
        reserve = self.reserve_s(deadline, is_last)
        body = call.body_for(backend.config)

        async def once(timeout_s: float) -> dict[str, Any]:
            if call.stream and body is not None:
                payload = await self._buffered(backend, call.path, body, timeout_s)
            else:
                payload = await backend.request(call.method, call.path, timeout_s=timeout_s,
                                                json_body=body)
            call.check(payload, backend.name)
            return payload

        return await call_with_retries(once, budget_end=deadline.end - reserve,
                                       attempts=self.settings.retry_attempts,
                                       idempotent=call.idempotent, on_attempt=on_attempt)

    async def _buffered(self, backend: Backend, path: str, body: dict[str, Any],
                        timeout_s: float) -> dict[str, Any]:
        """One streamed attempt, read whole (within `timeout_s`) into a completion."""
        limits = StreamLimits(self.settings.first_token_timeout_ms / 1000.0,
                              self.settings.stream_stall_timeout_ms / 1000.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        opened = await backend.open_stream(
            "POST", path, timeout_s=timeout_s, first_token_s=limits.first_token_s,
            json_body={**body, "stream": True, "stream_options": {"include_usage": True}})
        if opened.payload is not None:  # it answered JSON: the call's own check judges it
            await opened.aclose()
            return opened.payload
        try:
            chunks = [chunk async for chunk in opened.chunks(limits, started=started,
                                                              end=started + timeout_s)]
        except BaseException:
            await opened.aclose()
            raise
        usage = await opened.finish()
        completion = completion_from_chunks(chunks)
        if usage is not None:
            completion["usage"] = usage
        return completion

    def _maybe_wake(self, name: BackendName, reason: str) -> None:
        if name == "space" and reason in WAKE_REASONS:
            self.waker.request(reason)

    def breaker_states(self) -> dict[str, str]:
        """Each backend's circuit state, for `/health`."""
        return {name: breaker.state for name, breaker in self.breakers.items()}
