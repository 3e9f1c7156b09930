"""Per-subject quotas: `RATE_LIMIT_PER_MINUTE` (over it: 429) and `LLM_RATE_LIMIT_PER_MINUTE`
(the GPU budget: over it the Space leaves the request's order, `X-Chat-Fallback: quota`).

Counters are fixed one-minute windows that start at a subject's first request. Without
`REDIS_URL` they live in this container's memory, so each warm container counts alone (the
limits are approximate); with it they are shared through Redis (router/_quota_redis.py). Every
count is awaited on the caller's event loop and never blocks it.
"""

from __future__ import annotations

import math

from router._config import Settings
from router._counter import Counter, MemoryCounter, QuotaState
from router._errors import RateLimited

WINDOW_S = 60
KEY_PREFIX = "chat-router:quota:"


class SpaceBudget:
    """One request's claim on its subject's GPU budget (LLM_RATE_LIMIT_PER_MINUTE).

    The engine asks `admit` before every attempt that would go to a deployment, whatever sent
    it there (first choice, the next of the tier, a context-length fallback, a circuit-open
    fallback, a stream failover); those on the LLM tier (every Space, endpoint or other LLM
    deployment: one budget for them all) are counted, once per request. Over the limit the
    LLM tier is skipped and `refusal` holds the 429 for a request that no other backend can
    serve.
    """

    def __init__(self, quotas: Quotas, subject: str) -> None:
        self.quotas = quotas
        self.subject = subject
        self.refusal: RateLimited | None = None
        self._allowed: bool | None = None

    async def admit(self, gpu: bool) -> bool:
        """Whether this request may go to a deployment now, `gpu` when it is on the LLM tier
        (counted on its first attempt there)."""
        if not gpu or not self.quotas.llm_limit:
            return True
        if self._allowed is None:
            window = await self.quotas.counter.hit(KEY_PREFIX + "llm:" + self.subject, WINDOW_S)
            self._allowed = window is None or window.count <= self.quotas.llm_limit
            if not self._allowed and window is not None:
                self.refusal = RateLimited(
                    f"more than {self.quotas.llm_limit} LLM requests a minute, and no other "
                    "backend could serve this one; retry later",
                    retry_after_s=max(1, math.ceil(window.reset_s)))
        return self._allowed


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

    @property
    def state(self) -> QuotaState:
        """How quotas were counted last, for /health (which never asks Redis itself: it must
        stay cheap, and the function's cold /health would pay for importing redis-py)."""
        if not (self.limit or self.llm_limit):
            return "off"
        if self._counter is None:
            return "unverified" if self.redis_url else "local"
        return self._counter.state

    async def verify(self) -> QuotaState:
        """Check the store's login once (the service, at start-up)."""
        if not (self.limit or self.llm_limit):
            return "off"
        return await self.counter.verify()

    async def check(self, subject: str) -> None:
        """Count one request; over RATE_LIMIT_PER_MINUTE raise RateLimited (429)."""
        if not self.limit:
            return
        window = await self.counter.hit(KEY_PREFIX + "all:" + subject, WINDOW_S)
        if window is not None and window.count > self.limit:
            raise RateLimited(f"more than {self.limit} requests a minute; retry later",
                              retry_after_s=max(1, math.ceil(window.reset_s)))

    def budget(self, subject: str) -> SpaceBudget:
        """A fresh claim on `subject`'s GPU budget, for one request."""
        return SpaceBudget(self, subject)

    async def aclose(self) -> None:
        """Release the counter's connections (on the loop that used them)."""
        if self._counter is not None:
            await self._counter.aclose()
