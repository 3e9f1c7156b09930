"""Where quota windows are counted: the counter's protocol, and the one in this container's
memory. The Redis counter (router/_quota_redis.py) keeps the same protocol; router/_quota.py
holds the limits and picks the counter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

# What /health says of the quotas: `off` (no limit set), `local` (this container's memory),
# `unverified` (Redis not asked yet in this container), `shared` (Redis answers),
# `unreachable` (Redis down or slow: failing open), `misconfigured` (Redis refused the login:
# failing open, a configuration error).
QuotaState = Literal["off", "local", "unverified", "shared", "unreachable", "misconfigured"]


@dataclass(frozen=True, slots=True)
class Window:
    """A subject's window after one more hit: requests counted, and seconds until it resets."""

    count: int
    reset_s: float


class Counter(Protocol):
    """Where windows are counted; `None` from `hit` means "unknown" (the quota fails open)."""

    @property
    def state(self) -> QuotaState:
        """How the store answered last."""

    async def hit(self, key: str, window_s: int) -> Window | None:
        """Count one request for `key` and return its window."""

    async def verify(self) -> QuotaState:
        """Ask the store whether it takes our login (one bounded round trip, or none)."""

    async def aclose(self) -> None:
        """Release connections, if any."""


class MemoryCounter:
    """Fixed windows in this container's memory: cheap, per container, approximate."""

    state: QuotaState = "local"

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()  # the local gateway serves threads; DO serves one at once

    async def hit(self, key: str, window_s: int) -> Window:
        """Count one request for `key` in its current window (it never waits on anything)."""
        now = self.clock()
        with self._lock:
            started, count = self._windows.get(key, (now, 0))
            if now - started >= window_s:
                started, count = now, 0
            if len(self._windows) >= self.max_keys and key not in self._windows:
                self._prune(now, window_s)
            self._windows[key] = (started, count + 1)
        return Window(count + 1, window_s - (now - started))

    def _prune(self, now: float, window_s: int) -> None:
        expired = [k for k, (started, _) in self._windows.items() if now - started >= window_s]
        for k in expired:
            del self._windows[k]
        if len(self._windows) >= self.max_keys:
            self._windows.clear()  # a flood of subjects: forget them all rather than grow

    def __len__(self) -> int:
        """How many keys are held now."""
        return len(self._windows)

    async def verify(self) -> QuotaState:
        """Memory always takes the count."""
        return self.state

    async def aclose(self) -> None:
        """Nothing to release."""
