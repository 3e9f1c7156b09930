"""One deadline per request, covering every attempt, retry and fallback."""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """A point on the monotonic clock after which no answer may be sent."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic, *,
                 shortened: bool = False) -> None:
        self._clock = clock
        self.budget_s = max(0.0, budget_s)
        # True when the caller's own header cut the deadline below the configured one: a
        # backend that misses such a deadline has not shown that it is failing.
        self.shortened = shortened
        self.started = clock()
        self.end = self.started + self.budget_s
        # The caller's own `X-Chat-Deadline-Ms`, in seconds, when it sent one.
        self.requested_s: float | None = None

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.end - self._clock())

    def elapsed_ms(self) -> float:
        """Milliseconds since the request started."""
        return (self._clock() - self.started) * 1000.0

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self._clock() >= self.end

    @classmethod
    def for_request(cls, configured_ms: int, *, floor_ms: int, margin_ms: int,
                    edge_limit_ms: int | None, requested_ms: int | None) -> Deadline:
        """The smaller of the configured deadline, the edge's own time limit (a function's
        remaining time, the service's `limits.timeout`) less `margin_ms`, and the caller's own
        `X-Chat-Deadline-Ms` (never below `floor_ms`)."""
        budget_ms = float(configured_ms)
        if edge_limit_ms is not None:
            budget_ms = min(budget_ms, float(edge_limit_ms - margin_ms))
        shortened = False
        if requested_ms is not None:
            wanted = max(float(requested_ms), float(floor_ms))
            shortened = wanted < budget_ms
            budget_ms = min(budget_ms, wanted)
        deadline = cls(budget_ms / 1000.0, shortened=shortened)
        deadline.requested_s = None if requested_ms is None else max(requested_ms, floor_ms) / 1e3
        return deadline

    def stretched_to(self, budget_s: float) -> Deadline:
        """The same request's deadline with `budget_s` from its start, as the service gives a
        true stream (no platform cuts it); a caller's own shorter header still holds."""
        wanted = budget_s if self.requested_s is None else min(budget_s, self.requested_s)
        stretched = Deadline(wanted, self._clock, shortened=wanted < budget_s)
        stretched.started = self.started
        stretched.end = self.started + stretched.budget_s
        stretched.requested_s = self.requested_s
        return stretched
