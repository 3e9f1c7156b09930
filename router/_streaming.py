"""True streaming through the one fallback engine (the service's `stream: true`).

The same order, breakers, retries and wake as `FallbackEngine.run`; what differs is that the
answer goes out chunk by chunk, so a failure can come after content reached the client. Then
the next backend is asked to continue the partial answer (assistant prefill); if it refuses
that request, it restarts the answer in full after `RESTART_MARKER`. A stream never ends with
a `finish_reason` unless a backend finished it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router._backends import Backend, BackendConfig, BackendName, OpenStream
from router._deadline import Deadline
from router._errors import BackendError, BackendRejected, CircuitOpen, OverBudget
from router._fallback import (
    CALLER_FAULT,
    CONTEXT_TOO_LONG,
    FallbackEngine,
    no_answer,
    rejected_error,
)
from router._quota import SpaceBudget
from router._retry import Attempt, call_with_retries
from router._stream_read import StreamLimits, content_of

RESTART_MARKER = "\n\n[The answer was interrupted; it restarts here in full.]\n\n"


@dataclass(slots=True)
class StreamFacts:
    """What the last chunk's `x_chat` says: who answered, why not the first choice, tries."""

    route: str
    backend: str = ""
    fallback: str | None = None
    attempts: int = 0
    usage: dict[str, Any] | None = None

    def count(self, attempt: Attempt) -> None:
        """The retry layer's hook: one more request sent to a backend."""
        self.attempts += 1

    def as_dict(self) -> dict[str, Any]:
        """The `x_chat` object."""
        return {"backend": self.backend, "fallback": self.fallback, "attempts": self.attempts,
                "route": self.route}


class StreamRun:
    """One streamed request: `chunks()` yields checked chunks; `facts` fills in as it goes."""

    def __init__(self, engine: FallbackEngine, order: Sequence[BackendName],
                 body_for: Callable[[BackendConfig], dict[str, Any]], deadline: Deadline,
                 facts: StreamFacts, budget: SpaceBudget | None = None) -> None:
        self.engine = engine
        self.budget = budget  # the caller's GPU budget, asked before each backend (failover too)
        self.order = order
        self.body_for = body_for
        self.deadline = deadline
        self.facts = facts
        settings = engine.settings
        self.limits = StreamLimits(settings.first_token_timeout_ms / 1000.0,
                                   settings.stream_stall_timeout_ms / 1000.0)
        self.partial = ""

    async def chunks(self) -> AsyncGenerator[dict[str, Any], None]:
        """Every chunk of one complete answer, from one backend or several in turn."""
        reasons: list[str] = []
        retry_after = 0.0
        for index, name in enumerate(self.order):
            try:
                await self.engine.admit_within(name, self.budget)
            except (CircuitOpen, OverBudget) as exc:
                reasons.append(exc.reason)
                retry_after = max(retry_after, exc.retry_after_s or 0.0)
                continue
            self.facts.fallback = reasons[0] if reasons else None
            inner = self._from(name, index == len(self.order) - 1)
            try:
                async for chunk in inner:
                    yield chunk
            except (asyncio.CancelledError, GeneratorExit):
                self.engine.breakers[name].release()  # the client went away: no verdict
                raise
            except BackendError as exc:
                if isinstance(exc, BackendRejected) and exc.status in CALLER_FAULT \
                        and not self.partial:
                    self.engine.breakers[name].record_success()
                    if exc.provider_code == CONTEXT_TOO_LONG and index < len(self.order) - 1:
                        reasons.append(CONTEXT_TOO_LONG)
                        continue
                    raise rejected_error(exc, self.engine.settings) from None
                reasons.append(exc.reason)
                if exc.retry_after_s is not None:
                    retry_after = max(retry_after, exc.retry_after_s)
                self.engine.note_failure(name, exc, self.deadline)
                continue
            finally:
                await inner.aclose()  # now, not at garbage collection: it hangs up the backend
            self.engine.breakers[name].record_success()
            return
        raise no_answer(reasons, retry_after, self.deadline, budget=self.budget)

    async def _open(self, backend: Backend, body: dict[str, Any], is_last: bool) -> OpenStream:
        reserve = self.engine.reserve_s(self.deadline, is_last)

        async def once(timeout_s: float) -> OpenStream:
            return await backend.open_stream("POST", "/v1/chat/completions", timeout_s=timeout_s,
                                             first_token_s=self.limits.first_token_s,
                                             json_body=body)

        return await call_with_retries(once, budget_end=self.deadline.end - reserve,
                                       attempts=self.engine.settings.retry_attempts,
                                       idempotent=False, on_attempt=self.facts.count)

    async def _from(self, name: BackendName, is_last: bool
                    ) -> AsyncGenerator[dict[str, Any], None]:
        backend = self.engine.backends[name]
        body = {**self.body_for(backend.config), "stream": True,
                "stream_options": {"include_usage": True}}
        marker = ""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.partial:
            # Continue the partial answer: the assistant's words so far, as a prefill.
            prefill = {**body, "messages": [*body["messages"],
                                            {"role": "assistant", "content": self.partial}]}
            try:
                opened = await self._open(backend, prefill, is_last)
            except BackendRejected as exc:
                if exc.status not in CALLER_FAULT:
                    raise
                marker = RESTART_MARKER  # it refuses a prefill: restart the answer in full
                opened = await self._open(backend, body, is_last)
        else:
            opened = await self._open(backend, body, is_last)
        # The attempt's end on the loop's clock (uvloop's clock need not be time.monotonic's).
        end = loop.time() + (self.deadline.end - self.engine.reserve_s(self.deadline, is_last)
                             - time.monotonic())
        first = True
        try:
            async for chunk in opened.chunks(self.limits, started=started, end=end):
                if first:
                    self.facts.backend = name
                    if marker:
                        yield _with_content(chunk, marker)
                first = False
                self.partial += content_of(chunk)
                yield chunk
        except BaseException:
            await opened.aclose()
            raise
        self.facts.usage = await opened.finish()


def _with_content(like: dict[str, Any], text: str) -> dict[str, Any]:
    return {**like, "choices": [{"index": 0, "delta": {"content": text},
                                 "finish_reason": None}]}
