"""The one retry layer: tenacity, exact exception types, jitter, clamped to a time budget.

Only `BackendError`s that say `retryable` are retried, and a request that may have reached the
backend is re-sent only when it is idempotent (generation is billed: never send it twice).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState

from router._errors import BackendError

T = TypeVar("T")

# Tests flip this off (an autouse fixture restores it) so that backoff costs no wall time.
_BACKOFF = {"enabled": True}
_BASE_S = 0.1
_CAP_S = 2.0
# An attempt with less than this left is not worth starting.
MIN_ATTEMPT_S = 0.05


def set_backoff(enabled: bool) -> None:
    """Turn the waits between attempts on or off (off is for tests)."""
    _BACKOFF["enabled"] = enabled


@dataclass(frozen=True, slots=True)
class Attempt:
    """A frozen record of one finished attempt, handed to the `on_attempt` hook."""

    number: int
    error: BackendError | None


def _should_retry(idempotent: bool) -> Callable[[RetryCallState], bool]:
    def check(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, BackendError) or not exc.retryable:
            return False
        if idempotent or not exc.sent:
            return True
        return exc.resend_once and state.attempt_number == 1

    return check


def _wait(state: RetryCallState) -> float:
    if not _BACKOFF["enabled"]:
        return 0.0
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, BackendError) and exc.retry_after_s is not None:
        return exc.retry_after_s
    # Full jitter: spreads retries from many warm containers apart.
    ceiling = min(_CAP_S, _BASE_S * (2 ** (state.attempt_number - 1)))
    return random.uniform(0.0, ceiling)


async def call_with_retries(fn: Callable[[float], Awaitable[T]], *, budget_end: float,
                            attempts: int, idempotent: bool,
                            clock: Callable[[], float] = time.monotonic,
                            on_attempt: Callable[[Attempt], None] | None = None) -> T:
    """Await `fn(timeout_s)` until it succeeds, a non-retryable error, `attempts`, or the budget.

    `fn` receives the seconds left before `budget_end`; waits never run past it either.
    `on_attempt` gets a record of every attempt as it ends (the engine counts them with it).
    """
    number = 0

    async def recorded() -> T:
        nonlocal number
        number += 1
        try:
            result = await fn(budget_end - clock())
        except BackendError as exc:
            if on_attempt is not None:
                on_attempt(Attempt(number, exc))
            raise
        if on_attempt is not None:
            on_attempt(Attempt(number, None))
        return result

    # Most calls succeed at once, and tenacity's machinery costs ~150 µs a call: the first try
    # runs bare, and only a failure enters tenacity, which is handed that failure as its own
    # first attempt, so every decision (retry? wait? stop?) is still tenacity's.
    try:
        return await recorded()
    except BackendError as exc:
        first: list[BackendError] = [exc]

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= attempts:
            return True
        left = budget_end - clock()
        # The wait must leave room for a useful attempt, or we stop and let the caller fall back.
        return state.upcoming_sleep + MIN_ATTEMPT_S > left

    retrying = AsyncRetrying(
        retry=_should_retry(idempotent),
        wait=_wait,
        stop=stop,
        reraise=True,
    )

    async def attempt() -> T:
        if first:
            raise first.pop()
        return await recorded()

    return await retrying(attempt)
