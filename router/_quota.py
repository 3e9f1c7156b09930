"""Per-subject quotas: `RATE_LIMIT_PER_MINUTE` (over it: 429) and `LLM_RATE_LIMIT_PER_MINUTE`
(over it: the worker answers instead of the Space, `X-Chat-Fallback: quota`).

Counters are fixed one-minute windows that start at a subject's first request. Without
`REDIS_URL` they live in this container's memory, so each warm container counts alone (the
limits are approximate); with it they are shared through Redis (router/_quota_redis.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from router._config import Settings
from router._errors import RateLimited

WINDOW_S = 60
KEY_PREFIX = "chat-router:quota:"


@dataclass(frozen=True, slots=True)
class Window:
    """A subject's window after one more hit: requests counted, and seconds until it resets."""

    count: int
    reset_s: float


class Counter(Protocol):
    """Where windows are counted; `None` from `hit` means "unknown" (the quota fails open)."""

    def hit(self, key: str, window_s: int) -> Window | None:
        """Count one request for `key` and return its window."""

    def close(self) -> None:
        """Release connections, if any."""


class MemoryCounter:
    """Fixed windows in this container's memory: cheap, per container, approximate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()  # the local gateway serves threads; DO serves one at once

    def hit(self, key: str, window_s: int) -> Window:
        """Count one request for `key` in its current window."""
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

    def close(self) -> None:
        """Nothing to release."""


class Quotas:
    """The two per-subject limits, over one counter created on first use."""

    def __init__(self, settings: Settings, counter: Counter | None = None) -> None:
        self.limit = settings.rate_limit_per_minute
        self.llm_limit = settings.llm_rate_limit_per_minute
        self.redis_url = settings.redis_url
        self.redis_timeout_s = settings.redis_timeout_ms / 1000.0
        self._counter = counter

    @property
    def counter(self) -> Counter:
        """The counter: Redis when REDIS_URL is set (imported only then), else memory."""
        if self._counter is None:
            if self.redis_url:
                from router._quota_redis import RedisCounter

                self._counter = RedisCounter(self.redis_url, timeout_s=self.redis_timeout_s)
            else:
                self._counter = MemoryCounter()
        return self._counter

    def check(self, subject: str) -> None:
        """Count one request; over RATE_LIMIT_PER_MINUTE raise RateLimited (429)."""
        if not self.limit:
            return
        window = self.counter.hit(KEY_PREFIX + "all:" + subject, WINDOW_S)
        if window is not None and window.count > self.limit:
            raise RateLimited(f"more than {self.limit} requests a minute; retry later",
                              retry_after_s=max(1, math.ceil(window.reset_s)))

    def llm_allowed(self, subject: str) -> bool:
        """Count one request bound for the Space; False once over LLM_RATE_LIMIT_PER_MINUTE."""
        if not self.llm_limit:
            return True
        window = self.counter.hit(KEY_PREFIX + "llm:" + subject, WINDOW_S)
        return window is None or window.count <= self.llm_limit

    def close(self) -> None:
        """Release the counter's connections."""
        if self._counter is not None:
            self._counter.close()
