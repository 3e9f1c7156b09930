"""Per-container state: built once from the environment on the first call, then reused."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from router._config import Settings


class Closable(Protocol):
    """Anything holding clients to close."""

    def close(self) -> None:
        """Release what it holds."""


T = TypeVar("T", bound=Closable)


class PerContainer(Generic[T]):
    """One `T` per warm container, made by `build` from Settings read once at the edge.

    Each entry holds one in a module global on purpose: DigitalOcean reuses containers, and the
    clients, breakers and cool-downs must survive across warm invocations.
    """

    def __init__(self, build: Callable[[Settings], T],
                 env: Mapping[str, str] | None = None) -> None:
        self._build = build
        self._env = env
        self._lock = threading.Lock()
        self._value: T | None = None

    def get(self) -> T:
        """The object, built on the first call (settings are read and logging set up then)."""
        with self._lock:
            if self._value is None:
                from router._logs import configure_logging

                settings = Settings.from_env(self._env if self._env is not None else os.environ)
                configure_logging(settings)
                self._value = self._build(settings)
            return self._value

    def close(self) -> None:
        """Close it, if built (tests and the service's shutdown; never needed on DO)."""
        with self._lock:
            if self._value is not None:
                self._value.close()
                self._value = None
