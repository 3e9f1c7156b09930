"""Bridge one generation job to HTTP: an SSE stream, or one collected answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ai_space import schema
from ai_space.config import Settings
from ai_space.errors import APIError, error_body
from ai_space.generation import Delta, Event, Finished, GenerationJob, SamplingParams, TokenLogprob
from ai_space.logprobs import LogprobBuffer, content
from ai_space.protocols import Engine

log = logging.getLogger("ai_space")

# OpenAI's default; the router sets its own per request.
DEFAULT_TEMPERATURE = 1.0


def sampling(body: schema.ChatCompletionRequest, settings: Settings) -> SamplingParams:
    """The request's sampling settings, with max_tokens clamped to the server's cap."""
    asked = body.max_completion_tokens or body.max_tokens or settings.max_tokens
    return SamplingParams(
        max_tokens=min(asked, settings.max_tokens),
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=body.stop_strings(),
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=tuple((int(k), v) for k, v in (body.logit_bias or {}).items()),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )


def sse_event(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event's bytes: a JSON chunk, or a literal such as "[DONE]"."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


@dataclass
class ChatStream:
    """A submitted job and the asyncio queue its events arrive on."""

    job: GenerationJob
    queue: asyncio.Queue[Event]
    model: str
    stream: bool
    cid: str = field(default_factory=schema.new_completion_id)
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(cls, batcher: Engine, prompt_ids: list[int], body: schema.ChatCompletionRequest,
             settings: Settings) -> ChatStream:
        """Submit a job (QueueFull propagates as a 429) and wire its events to this loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            # Called from the batcher thread; the loop may be gone at shutdown.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, event)

        params = sampling(body, settings)
        job = GenerationJob(prompt_ids, params, emit)
        if params.logprobs is not None:
            buffer = LogprobBuffer(emit)
            job.emit, job.on_logprob = buffer.emit, buffer.add
        batcher.submit(job)
        return cls(job, queue, settings.model_name, body.stream)

    def log_done(self, event: Finished | None) -> None:
        """One line per request: outcome, token counts, latency. Never the messages."""
        log.info("chat stream=%s finish=%s prompt_tokens=%d completion_tokens=%d "
                 "latency_ms=%.0f", self.stream, event.finish_reason if event else "disconnect",
                 len(self.job.prompt_ids), self.job.completion_tokens,
                 (time.perf_counter() - self.started) * 1000)

    def logprobs_of(self, entries: tuple[TokenLogprob, ...]) -> dict[str, Any] | None:
        """A choice's `logprobs` object when the request asked for them, else None."""
        return content(entries) if self.job.params.logprobs is not None else None

    async def sse(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The SSE body. If the client goes away, Starlette cancels this and the job stops."""
        finished: Finished | None = None
        try:
            yield sse_event(schema.chunk(self.cid, self.model, self.created,
                                    {"role": "assistant", "content": ""}))
            while True:
                event = await self.queue.get()
                if isinstance(event, Delta):
                    yield sse_event(schema.chunk(self.cid, self.model, self.created,
                                            {"content": event.text},
                                            logprobs=self.logprobs_of(event.logprobs)))
                    continue
                finished = event
                if event.finish_reason in {"error", "cancelled"}:
                    # The openai client raises on an `error` event, so the caller sees it.
                    yield sse_event(error_body(500, "server_error", _failure(event),
                                          "generation_failed"))
                else:
                    yield sse_event(schema.chunk(self.cid, self.model, self.created, {},
                                            event.finish_reason))
                    if include_usage:
                        yield sse_event(schema.usage_chunk(self.cid, self.model, self.created,
                                                      event.prompt_tokens,
                                                      event.completion_tokens))
                yield sse_event("[DONE]")
                return
        finally:
            if finished is None:
                self.job.cancel.set()
            self.log_done(finished)


def _failure(event: Finished) -> str:
    if event.finish_reason == "cancelled":
        return "generation was cancelled (server shutting down)"
    return "generation failed"


async def collect(stream: ChatStream, request: Request) -> dict[str, Any]:
    """Wait for the whole answer; cancel the job if the client disconnects first."""
    watcher = asyncio.create_task(_watch_disconnect(request, stream.job))
    parts: list[str] = []
    entries: list[TokenLogprob] = []
    finished: Finished | None = None
    try:
        while True:
            event = await stream.queue.get()
            if isinstance(event, Delta):
                parts.append(event.text)
                entries.extend(event.logprobs)
                continue
            finished = event
            break
    finally:
        watcher.cancel()
        if finished is None:
            stream.job.cancel.set()
        stream.log_done(finished)
    if finished.finish_reason in {"error", "cancelled"}:
        raise APIError(_failure(finished), code="generation_failed")
    return schema.completion(stream.cid, stream.model, "".join(parts), finished.finish_reason,
                             finished.prompt_tokens, finished.completion_tokens,
                             logprobs=stream.logprobs_of(tuple(entries)))


async def _watch_disconnect(request: Request, job: GenerationJob) -> None:
    # The body has been read already, so the next message on the channel is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel.set()
            log.info("client disconnected; cancelling its generation")
            return
