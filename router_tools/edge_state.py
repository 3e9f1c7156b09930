"""A Space's stage as Hugging Face's Hub reports it, for router_tools/local_edge.py.

APP_STARTING until `start_s` has passed and the app's health probe answers, then RUNNING;
SLEEPING after `sleep_time_s` without requests (or when asked), PAUSED until restarted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("router.local_edge")

RUNNING = "RUNNING"
STARTING = "APP_STARTING"
SLEEPING = "SLEEPING"
PAUSED = "PAUSED"


class SpaceState:
    """One Space's stage as the Hub reports it, and the rules that change it."""

    def __init__(self, *, start_s: float, probe: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start_s = start_s
        self.sleep_time_s: int | None = None
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._stage = STARTING
        self._since = clock()
        self._last_request = clock()
        self.restarts = 0
        self.history: list[dict[str, Any]] = [{"stage": STARTING, "at": 0.0, "why": "boot"}]
        self._born = clock()

    def _set(self, stage: str, why: str) -> None:
        if stage == self._stage:
            return
        self._stage = stage
        self._since = self._clock()
        self.history.append({"stage": stage, "at": round(self._since - self._born, 3),
                             "why": why})
        log.info("space stage %s (%s)", stage, why)

    def _tick(self) -> float | None:
        # Applies the idle sleep; returns the start's stamp when its delay has passed (the app's
        # health is then due), else None.
        with self._lock:
            now = self._clock()
            if (self._stage == RUNNING and self.sleep_time_s is not None
                    and self.sleep_time_s > 0 and now - self._last_request >= self.sleep_time_s):
                self._set(SLEEPING, "idle")
            due = self._stage == STARTING and now - self._since >= self.start_s
            return self._since if due else None

    def _settle(self, since: float | None, healthy: bool) -> str:
        with self._lock:
            if healthy and self._stage == STARTING and self._since == since:
                self._set(RUNNING, "app healthy")
            return self._stage

    @property
    def stage(self) -> str:
        """The current stage, after applying the start delay and the idle sleep time."""
        since = self._tick()
        # Probe the app outside the lock: it is an HTTP call.
        return self._settle(since, since is not None and self._probe())

    async def stage_async(self) -> str:
        """The current stage, as `stage`, with the app's health probe run off the event loop."""
        since = self._tick()
        healthy = since is not None and await asyncio.to_thread(self._probe)
        return self._settle(since, healthy)

    def touch(self) -> None:
        """Record a request to the app (a request keeps a Space awake)."""
        with self._lock:
            self._last_request = self._clock()

    def restart(self) -> None:
        """A Hub restart: from any stage, the app starts over."""
        with self._lock:
            self.restarts += 1
            self._set(STARTING, "restart")
            self._since = self._clock()
            self._last_request = self._since

    def sleep(self) -> None:
        """Put the Space to sleep now (local control)."""
        with self._lock:
            self._set(SLEEPING, "sleep requested")

    def pause(self) -> None:
        """A Hub pause: stays paused until restarted."""
        with self._lock:
            self._set(PAUSED, "pause")

    def snapshot(self, stage: str | None = None) -> dict[str, Any]:
        """Stage (given, or read now), history and counters, for the local state endpoint."""
        stage = stage or self.stage
        with self._lock:
            return {"stage": stage, "restarts": self.restarts, "history": list(self.history),
                    "sleep_time_s": self.sleep_time_s}
