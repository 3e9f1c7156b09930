"""A per-backend circuit breaker, kept per warm container."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Skips a backend after `failures` failures in a row, for `cooldown_s` seconds.

    When the cool-down ends, one caller is let through as a probe; its result closes the
    circuit again or re-opens it for another cool-down. Thread-safe, because the local gateway
    serves requests from several threads against one router.
    """

    def __init__(self, failures: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._open_for = cooldown_s
        self._probing = False

    @property
    def state(self) -> State:
        """The current state, for logs and `/health`."""
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._open_for:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a request may go to the backend now (taking the probe slot if half-open)."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half_open" and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        """Close the circuit."""
        with self._lock:
            self._count = 0
            self._opened_at = None
            self._probing = False

    def release(self) -> None:
        """Give back a probe slot without a verdict (the attempt proved nothing either way)."""
        with self._lock:
            self._probing = False

    def record_failure(self, cooldown_s: float | None = None) -> None:
        """Count a failure; open (or re-open) the circuit at the threshold or a failed probe,
        for `cooldown_s` (default: the breaker's own cool-down)."""
        with self._lock:
            self._count += 1
            if self._probing or self._count >= self.failures:
                self._opened_at = self._clock()
                self._open_for = self.cooldown_s if cooldown_s is None else cooldown_s
            self._probing = False

    def retry_after_s(self) -> float:
        """Seconds until the next probe may go out (0 when closed)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._open_for - (self._clock() - self._opened_at))
