"""One asyncio event loop per warm container, for the synchronous `main(event, context)`.

The engine is async (the service awaits it on uvicorn's loop). The function calls it from
plain threads, so it runs each request on one loop of its own, on one daemon thread, started
on the first request and kept across warm invocations: the async httpx clients stay bound to
that one loop, and their pooled connections survive between calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A loop running forever on a daemon thread; `run` hands it one coroutine and waits."""

    def __init__(self, name: str = "router-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result (callable from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._start()).result()

    def close(self) -> None:
        """Stop the loop and its thread (tests and shutdown; never needed on DigitalOcean)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
