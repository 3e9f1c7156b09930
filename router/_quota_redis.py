"""Quota counters shared through Redis (or DigitalOcean's Managed Caching for Valkey).

One round trip per hit: `MULTI; INCR; EXPIRE NX; PTTL; EXEC`, atomic across containers. The
round trip runs on a small pool of worker threads that the caller's loop awaits (the service's,
or the function's one loop per container), so a slow Redis holds only the requests that wait
for it, never the loop and the streams on it. (redis-py's asyncio client would build each TLS
connection's context on the loop itself, tens of milliseconds per connection.)

A slow or dead Redis must never hold a user's answer: every socket step is bounded by
REDIS_TIMEOUT_MS and the whole call by CALL_STEPS of them (a wait for a free thread included),
nothing is retried, and after a failure Redis is skipped for a cool-down (the quota fails open
meanwhile). A refused login is a configuration error (`misconfigured`): it fails open too, but
/health says so and the service refuses to start. Failures are logged at most once a minute,
by type only (the URL may hold a password).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from router._counter import QuotaState, Window

log = logging.getLogger("router.quota")

T = TypeVar("T")

COOLDOWN_S = 5.0
LOG_EVERY_S = 60.0
# Socket steps one call may take: connect, login, the round trip.
CALL_STEPS = 3
# Quota calls in flight at once; more wait for a thread (within the call's bound).
THREADS = 16
# Errors that say our credentials are wrong, not that Redis is down: retrying will not help.
LOGIN_REFUSED = (redis.AuthenticationError, redis.exceptions.NoPermissionError)


class RedisCounter:
    """Fixed windows in Redis; `hit` answers None (fail open) when Redis cannot answer in time."""

    def __init__(self, url: str, *, timeout_s: float, cooldown_s: float = COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
            # No CLIENT SETINFO round trips on connect: each would cost a timeout when slow.
            driver_info=None)
        self.call_s = timeout_s * CALL_STEPS
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state: QuotaState = "unverified"
        self._verified = False
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="router-quota")
        self._skip_until = float("-inf")
        self._logged_at = float("-inf")
        self._lock = threading.Lock()

    async def hit(self, key: str, window_s: int) -> Window | None:
        """Count one request for `key`; None when Redis is down, slow, or cooling down."""
        if self.clock() < self._skip_until:
            return None

        def count() -> Window:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, window_s, nx=True)
            pipe.pttl(key)
            hits, _, pttl = pipe.execute()
            return Window(int(hits), max(int(pttl), 0) / 1000.0)

        return await self._off_loop(count)

    async def verify(self) -> QuotaState:
        """One PING, until one has answered: `shared`, `unreachable` or `misconfigured`."""
        if not self._verified and self.clock() >= self._skip_until:
            await self._off_loop(self.client.ping)
        return self.state

    async def _off_loop(self, call: Callable[[], T]) -> T | None:
        future = asyncio.get_running_loop().run_in_executor(self._threads, call)
        try:
            result = await asyncio.wait_for(future, self.call_s)
        except (redis.RedisError, OSError) as exc:  # TimeoutError included
            self._failed(exc)
            return None
        self._verified = True
        self.state = "shared"
        return result

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        refused = isinstance(exc, LOGIN_REFUSED)
        with self._lock:
            self.state = "misconfigured" if refused else "unreachable"
            self._skip_until = now + self.cooldown_s
            if now - self._logged_at < LOG_EVERY_S:
                return
            self._logged_at = now
        fields = {"exc_type": type(exc).__name__, "retry_in_s": self.cooldown_s}
        if refused:
            log.error("quota store refused the login (REDIS_URL's user or password); quotas "
                      "fail open", extra={"fields": fields})
        else:
            log.warning("quota store unreachable; quotas fail open", extra={"fields": fields})

    async def aclose(self) -> None:
        """Close the connection pool and let the threads go."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.client.close()
