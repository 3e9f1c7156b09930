"""The fallback engine: the one loop that tries deployments in turn inside one deadline.

Every request to a backend goes through `FallbackEngine.run`: a chat streamed to the client as
it comes, a chat collected into one answer (the function's, and the service's `stream: false`),
and embeddings. What differs between them is the `Source` (router/_attempts.py): what one
attempt on one deployment sends, reads and hands on. The policy is here, once: which
deployment next (its `Route`, router/_choice.py: weighted least-busy within a tier, the rest of
the tier, then the other tier), each one's share of the deadline, its breaker and probe slot,
the caller's GPU budget, the verdict on a failure (the caller's fault, a reroute for a longer
context, or the deployment's), the wake of a sleeping one, and the record of every hop
(router/_record.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeGuard, TypeVar

from router._backends import Backend, BackendName
from router._breaker import CircuitBreaker
from router._choice import Balancer, Route
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
    NotReady,
    OverBudget,
    ResponseTooLarge,
    RouterError,
)
from router._quota import SpaceBudget
from router._record import Hop, RequestRecord
from router._stream_read import StreamOutOfTime
from router._telemetry import Observer
from router._wake import Waker

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# Failures of a Space or an endpoint that mean "not running": worth a (rate-limited,
# stage-checked) wake.
WAKE_REASONS = frozenset({"space_sleeping", "space_starting", "endpoint_starting", "timeout",
                          "unavailable", "circuit_open"})
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
    """Per-container: the deployments' clients, breakers, in-flight counts and wake paths."""

    def __init__(self, settings: Settings, backends: Mapping[BackendName, Backend],
                 wakers: Mapping[BackendName, Waker]) -> None:
        self.settings = settings
        self.backends = backends
        self.wakers = wakers
        self.breakers = {name: CircuitBreaker(settings.breaker_failures,
                                              settings.breaker_cooldown_s)
                         for name in backends}
        self.balancer = Balancer(settings.deployments, self._circuit_open)
        self.observer = Observer()  # the router's observers (router/_telemetry.py)

    def _circuit_open(self, name: BackendName) -> bool:
        return self.breakers[name].state == "open"

    async def run(self, route: Route, source: Source[T], deadline: Deadline,
                  record: RequestRecord, budget: SpaceBudget | None = None
                  ) -> AsyncGenerator[T, None]:
        """The items of one answer: from the first deployment `route` offers that the breakers
        and `budget` (the caller's GPU budget) admit and that answers within the deadline;
        after a failure part-way, from the next, as `source` continues it. Each hop goes into
        `record`. Read it to its end: the deployment's verdict is given when its items end.

        A wake runs on its own thread and is never awaited here: the answer does not wait for
        the Hub (the function's edge gives it a bounded moment to leave).
        """
        retry_after = 0.0
        too_large = False
        delivered = False  # the consumer holds part of an answer
        while (deployment := route.next()) is not None:
            name = deployment.name
            try:  # the lease `route.next` took is given back however this turn ends
                if deadline.expired():
                    break
                try:
                    await self.admit_within(name, budget, gpu=deployment.tier == "llm",
                                            record=record)
                except (CircuitOpen, OverBudget) as exc:
                    record.skip(name, exc.reason)
                    retry_after = max(retry_after, exc.retry_after_s or 0.0)
                    continue
                is_last = not route.has_more()
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
                        self.breakers[name].record_success()  # the backend is fine
                        if exc.provider_code == CONTEXT_TOO_LONG and not is_last:
                            hop.reason = CONTEXT_TOO_LONG  # one with a larger window may not
                            route.refused_as_too_long(deployment)
                            continue
                        raise rejected_error(exc, self.settings) from None
                    hop.reason = exc.reason
                    too_large = isinstance(exc, ResponseTooLarge)
                    if exc.retry_after_s is not None:
                        retry_after = max(retry_after, exc.retry_after_s)
                    self.note_failure(name, exc, deadline, record)
                    if isinstance(exc, StreamOutOfTime) and delivered:
                        # The caller's time is up mid-answer: no other backend can start now.
                        raise DeadlineExceeded("the deadline ended before the answer did",
                                               reasons=tuple(record.reasons())) from None
                    continue
                except BaseException:
                    # No verdict on the backend: the caller went away, or something that is
                    # no backend's failure broke the attempt. Either way, a probe slot goes
                    # back.
                    self.breakers[name].release()
                    raise
                finally:
                    await items.aclose()  # now, not at garbage collection: it hangs up
                self.breakers[name].record_success()
                return
            finally:
                self.balancer.release(name)
        raise no_answer(record.reasons(), retry_after, deadline, too_large=too_large,
                        budget=budget)

    async def answer(self, route: Route, source: Source[T], deadline: Deadline,
                     record: RequestRecord, budget: SpaceBudget | None = None) -> T:
        """The one item of a source that hands on a whole answer (`run`, read to its end)."""
        answers = [item async for item in self.run(route, source, deadline, record, budget)]
        return answers[-1]

    def note_failure(self, name: BackendName, exc: BackendError, deadline: Deadline,
                     record: RequestRecord | None = None) -> None:
        """A failed attempt: count it on the deployment's breaker (if it is evidence against
        it) and ask for a wake when the failure says it is not running."""
        self.observer.attempt_failed(name, exc.reason)
        breaker = self.breakers[name]
        if not counts_against(exc, deadline):
            breaker.release()
            return
        # A Space or an endpoint that says it is asleep or starting answers such probes in
        # milliseconds, and comes back soon after a wake: probe it sooner.
        breaker.record_failure(self.settings.space_probe_s if isinstance(exc, NotReady)
                               else None)
        self._maybe_wake(name, exc.reason, record)

    def admit(self, name: BackendName, record: RequestRecord | None = None) -> None:
        """Raise CircuitOpen (with the seconds until its probe) when the deployment is skipped
        for now; a wake is asked for then, if it sleeps."""
        breaker = self.breakers[name]
        if breaker.allow():
            return
        self._maybe_wake(name, CircuitOpen.reason, record)
        raise CircuitOpen(f"{name}: circuit open", backend=name, sent=False,
                          retry_after_s=breaker.retry_after_s())

    async def admit_within(self, name: BackendName, budget: SpaceBudget | None, *,
                           gpu: bool, record: RequestRecord | None = None) -> None:
        """`admit`, then the caller's GPU budget (asked for an LLM deployment, `gpu`): raise
        OverBudget when it keeps the request from it (counted only for an attempt that would
        really go out)."""
        self.admit(name, record)
        try:
            allowed = budget is None or await budget.admit(gpu)
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

    def _maybe_wake(self, name: BackendName, reason: str, record: RequestRecord | None
                    ) -> None:
        waker = self.wakers.get(name)
        if waker is not None and reason in WAKE_REASONS:
            # The wake's log lines name the request whose failure asked for it.
            waker.request(reason, record.ids() if record is not None else {})

    def settle_wakes(self, timeout_s: float) -> float:
        """Wait up to `timeout_s` in all for wakes still in flight; the seconds waited."""
        waited = 0.0
        for waker in self.wakers.values():
            waited += waker.settle(max(0.0, timeout_s - waited))
        return waited

    def breaker_states(self) -> dict[str, str]:
        """Each deployment's circuit state, for `/health` and the metrics."""
        return {name: breaker.state for name, breaker in self.breakers.items()}
