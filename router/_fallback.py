"""The fallback engine: the one loop that tries backends in order inside one deadline.

Every request to a backend goes through `FallbackEngine.run`: a chat streamed to the client as
it comes, a chat collected into one answer (the function's, and the service's `stream: false`),
and embeddings. What differs between them is the `Source` (router/_attempts.py): what one
attempt on one backend sends, reads and hands on. The policy is here, once: the order, each
backend's share of the deadline, the breaker and its probe slot, the caller's GPU budget, the
verdict on a failure (the caller's fault, a reroute for a longer context, or the backend's),
the wake of a sleeping Space, and the record of every hop (router/_record.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeGuard, TypeVar

from router._backends import Backend, BackendName
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
from router._record import Hop, RequestRecord
from router._stream_read import StreamOutOfTime
from router._telemetry import Observer
from router._wake import SpaceWaker

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# Space failures that mean "not running": worth a (rate-limited, stage-checked) wake.
WAKE_REASONS = frozenset({"space_sleeping", "space_starting", "timeout", "unavailable",
                          "circuit_open"})
# A backend's 4xx that is the caller's fault: answering it from another backend would not help,
# so it reaches the caller (a 404 too: a model or route the caller named). Not among them: 401
# and 403 (our own token for that backend is wrong), 408 and 429 (the backend's state).
CALLER_FAULT = frozenset(set(range(400, 500)) - {401, 403, 408, 429})
# A provider's 400 that another backend (with a larger context window) may not give.
CONTEXT_TOO_LONG = "context_length_exceeded"


def refused_request(exc: BackendError) -> TypeGuard[BackendRejected]:
    """Whether a backend refused the request itself (a 4xx of `CALLER_FAULT`), not failed."""
    return isinstance(exc, BackendRejected) and exc.status in CALLER_FAULT


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of the loop to one backend: what an attempt there may use."""

    backend: Backend
    hop: Hop
    deadline: Deadline
    # When this backend's share ends (time.monotonic): the deadline, less what the next
    # backend needs; the deadline itself for the last.
    share_end: float
    retry_attempts: int


class Source(Protocol[T_co]):
    """What one attempt on one backend does: send, read, check, and hand on what it has."""

    def attempt(self, turn: Turn) -> AsyncGenerator[T_co, None]:
        """The items of this backend's answer (a chat's chunks, or one whole answer); raise a
        BackendError when the backend fails."""
        ...


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

    async def run(self, order: Sequence[BackendName], source: Source[T], deadline: Deadline,
                  record: RequestRecord, budget: SpaceBudget | None = None
                  ) -> AsyncGenerator[T, None]:
        """The items of one answer: from the first backend in `order` that the breakers and
        `budget` (the caller's GPU budget) admit and that answers within the deadline; after
        a failure part-way, from the next, as `source` continues it. Each hop goes into
        `record`. Read it to its end: the backend's verdict is given when its items end.

        A wake of the Space runs on its own thread and is never awaited here: the answer does
        not wait for the Hub (the function's edge gives it a bounded moment to leave).
        """
        retry_after = 0.0
        too_large = False
        delivered = False  # the consumer holds part of an answer
        for index, name in enumerate(order):
            if deadline.expired():
                break
            try:
                await self.admit_within(name, budget)
            except (CircuitOpen, OverBudget) as exc:
                record.skip(name, exc.reason)
                retry_after = max(retry_after, exc.retry_after_s or 0.0)
                continue
            is_last = index == len(order) - 1
            hop = record.turn_to(name)
            items = source.attempt(Turn(self.backends[name], hop, deadline,
                                        deadline.end - self.reserve_s(deadline, is_last),
                                        self.settings.retry_attempts))
            try:
                async for item in items:
                    hop.answered = delivered = True
                    yield item
            except BackendError as exc:
                if refused_request(exc) and not delivered:
                    self.breakers[name].record_success()  # the backend is fine; the request not
                    if exc.provider_code == CONTEXT_TOO_LONG and not is_last:
                        hop.reason = CONTEXT_TOO_LONG  # the next may have a larger window
                        continue
                    raise rejected_error(exc, self.settings) from None
                hop.reason = exc.reason
                too_large = isinstance(exc, ResponseTooLarge)
                if exc.retry_after_s is not None:
                    retry_after = max(retry_after, exc.retry_after_s)
                self.note_failure(name, exc, deadline)
                if isinstance(exc, StreamOutOfTime) and delivered:
                    # The caller's time is up mid-answer: no other backend can start now.
                    raise DeadlineExceeded("the deadline ended before the answer did",
                                           reasons=tuple(record.reasons())) from None
                continue
            except BaseException:
                # No verdict on the backend: the caller went away, or something that is no
                # backend's failure broke the attempt. Either way, a probe slot goes back.
                self.breakers[name].release()
                raise
            finally:
                await items.aclose()  # now, not at garbage collection: it hangs up the backend
            self.breakers[name].record_success()
            return
        raise no_answer(record.reasons(), retry_after, deadline, too_large=too_large,
                        budget=budget)

    async def answer(self, order: Sequence[BackendName], source: Source[T], deadline: Deadline,
                     record: RequestRecord, budget: SpaceBudget | None = None) -> T:
        """The one item of a source that hands on a whole answer (`run`, read to its end)."""
        answers = [item async for item in self.run(order, source, deadline, record, budget)]
        return answers[-1]

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
        try:
            allowed = budget is None or await budget.admit(name)
        except BaseException:
            self.breakers[name].release()  # a probe slot taken by `admit` goes back unused
            raise
        if not allowed:
            self.breakers[name].release()
            raise OverBudget(f"{name}: over the GPU budget", backend=name, sent=False)

    def reserve_s(self, deadline: Deadline, is_last: bool) -> float:
        """Time kept for the next backend: never more than half of what is left."""
        return 0.0 if is_last else min(self.settings.fallback_reserve_ms / 1000.0,
                                       deadline.remaining() / 2)

    def _maybe_wake(self, name: BackendName, reason: str) -> None:
        if name == "space" and reason in WAKE_REASONS:
            self.waker.request(reason)

    def breaker_states(self) -> dict[str, str]:
        """Each backend's circuit state, for `/health`."""
        return {name: breaker.state for name, breaker in self.breakers.items()}
