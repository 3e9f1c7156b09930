"""True streaming through the one fallback engine (the service's `stream: true`).

The same order, breakers, retries and wake as `FallbackEngine.run`; what differs is that the
answer goes out chunk by chunk, so a failure can come after content reached the client. A
stream is judged by its progress: a backend gets its first-token limit (within its share of the
deadline) to produce, and once producing (content, reasoning or tool-call deltas) it keeps the
stream while it meets the stall limit, up to the caller's deadline. Running out of that
deadline mid-answer is no backend's failure. Chunks that show no progress (the role-only
first chunk) wait for the first one that does, so a backend that fails before producing is
never seen, and the headers name the backend that answered. After content, the next backend
continues the answer (router/_continuation.py). Every chunk keeps the first chunk's `id`,
`model` and `created`. A stream never ends with a `finish_reason` unless a backend finished it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router._backends import Backend, BackendConfig, BackendName, OpenStream
from router._continuation import RESTART_MARKER, Fitter, Sent
from router._deadline import Deadline
from router._errors import (
    BackendError,
    BackendRejected,
    CircuitOpen,
    DeadlineExceeded,
    OverBudget,
)
from router._fallback import (
    CALLER_FAULT,
    CONTEXT_TOO_LONG,
    FallbackEngine,
    no_answer,
    rejected_error,
)
from router._quota import SpaceBudget
from router._retry import Attempt, call_with_retries
from router._stream_read import StreamLimits, StreamOutOfTime, delta_of, makes_progress

__all__ = ["RESTART_MARKER", "StreamFacts", "StreamRun"]
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


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

    def add_usage(self, usage: dict[str, Any] | None, produced: int) -> None:
        """Add one backend's part of the answer: its own usage, or (a stream that ended before
        its usage came) the token-bearing chunks it sent, as completion tokens."""
        if usage is None:
            usage = {"completion_tokens": produced, "total_tokens": produced}
        total = self.usage or dict.fromkeys(USAGE_KEYS, 0)
        self.usage = {key: total[key] + _count(usage.get(key)) for key in USAGE_KEYS}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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
        self.sent = Sent()
        self.identity: dict[str, Any] | None = None

    async def chunks(self) -> AsyncGenerator[dict[str, Any], None]:
        """Every chunk of one complete answer, from one backend or several in turn."""
        reasons: list[str] = []
        retry_after = 0.0
        for index, name in enumerate(self.order):
            if self.deadline.expired():
                break
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
                        and not self.sent.anything:
                    self.engine.breakers[name].record_success()
                    if exc.provider_code == CONTEXT_TOO_LONG and index < len(self.order) - 1:
                        reasons.append(CONTEXT_TOO_LONG)
                        continue
                    raise rejected_error(exc, self.engine.settings) from None
                reasons.append(exc.reason)
                if exc.retry_after_s is not None:
                    retry_after = max(retry_after, exc.retry_after_s)
                self.engine.note_failure(name, exc, self.deadline)
                if isinstance(exc, StreamOutOfTime):
                    # The caller's time is up mid-answer: no other backend can start now.
                    raise DeadlineExceeded("the stream's deadline ended before its answer did",
                                           reasons=tuple(reasons)) from None
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
        loop = asyncio.get_running_loop()
        started = loop.time()
        fitter, opened = await self._open_next(backend, body, is_last)
        # The caller's deadline, and the end of this backend's share for its first token, on
        # the loop's clock (uvloop's clock need not be time.monotonic's).
        end = loop.time() + (self.deadline.end - time.monotonic())
        first_by = end - self.engine.reserve_s(self.deadline, is_last)
        held: list[dict[str, Any]] = []  # chunks before this backend's first progress
        progressed = False
        produced = 0
        try:
            async for chunk in opened.chunks(self.limits, started=started, end=end,
                                             first_by=first_by):
                delta = delta_of(chunk)
                if delta.get("content") or delta.get("reasoning_content") \
                        or delta.get("tool_calls"):
                    produced += 1
                for out in fitter.fit(chunk) if fitter else [chunk]:
                    if not progressed:
                        if not makes_progress(out):
                            held.append(out)
                            continue
                        progressed = True
                        self.facts.backend = name
                        # A role chunk is sent once: not again after another backend's.
                        for waiting in held if self.identity is None else []:
                            yield self._stamp(waiting)
                    self.sent.record(out)
                    yield self._stamp(out)
        except BaseException as exc:
            await opened.aclose()
            if isinstance(exc, BackendError):
                self.facts.add_usage(None, produced)
            raise
        self.facts.add_usage(await opened.finish(), produced)

    async def _open_next(self, backend: Backend, body: dict[str, Any], is_last: bool
                         ) -> tuple[Fitter | None, OpenStream]:
        """Open this backend's stream: the request as it came, or (content already sent) a
        continuation, a replay or a restart of the answer."""
        if self.sent.tool_calls:
            return Fitter(self.sent, replay=False), await self._open(backend, body, is_last)
        if not self.sent.text:
            return None, await self._open(backend, body, is_last)
        # Continue the partial answer: the assistant's words so far, as a prefill, asking
        # only for the tokens still owed.
        prefill = {**body, "messages": [*body["messages"],
                                        {"role": "assistant", "content": self.sent.text}]}
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(prefill.get(key), int):
                prefill[key] = self.sent.owed(prefill[key])
        try:
            return None, await self._open(backend, prefill, is_last)
        except BackendRejected as exc:
            if exc.status not in CALLER_FAULT:
                raise
        # It refuses a prefill: its whole answer again, fitted after what the client has.
        return Fitter(self.sent, replay=True), await self._open(backend, body, is_last)

    def _stamp(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk with the stream's one identity: the first chunk's id, model, created."""
        if self.identity is None:
            self.identity = {"id": chunk.get("id", "chatcmpl-router"),
                             "model": chunk.get("model", ""),
                             "created": chunk.get("created", 0)}
        return {**chunk, **self.identity}
