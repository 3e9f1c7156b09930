"""Quota counters shared through Redis (or DigitalOcean's Managed Caching for Valkey).

One round trip per hit: `MULTI; INCR; EXPIRE NX; PTTL; EXEC`, atomic across containers. A
slow or dead Redis must never hold a user's answer: every socket step is bounded by
REDIS_TIMEOUT_MS, nothing is retried, and after a failure Redis is skipped for a cool-down
(the quota fails open meanwhile). The failure is logged at most once a minute, by type only
(the URL may hold a password).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from router._quota import Window

log = logging.getLogger("router.quota")

COOLDOWN_S = 5.0
LOG_EVERY_S = 60.0


class RedisCounter:
    """Fixed windows in Redis; `hit` answers None (fail open) when Redis cannot answer in time."""

    def __init__(self, url: str, *, timeout_s: float, cooldown_s: float = COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
            # No CLIENT SETINFO round trips on connect: each would cost a timeout when slow.
            driver_info=None)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._skip_until = float("-inf")
        self._logged_at = float("-inf")
        self._lock = threading.Lock()

    def hit(self, key: str, window_s: int) -> Window | None:
        """Count one request for `key`; None when Redis is down, slow, or cooling down."""
        if self.clock() < self._skip_until:
            return None
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, window_s, nx=True)
            pipe.pttl(key)
            count, _, pttl = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return None
        return Window(int(count), max(int(pttl), 0) / 1000.0)

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        with self._lock:
            self._skip_until = now + self.cooldown_s
            if now - self._logged_at < LOG_EVERY_S:
                return
            self._logged_at = now
        log.warning("quota store unreachable; quotas fail open", extra={"fields": {
            "exc_type": type(exc).__name__, "retry_in_s": self.cooldown_s}})

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
