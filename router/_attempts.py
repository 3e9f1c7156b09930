"""What one attempt on one backend does, for the fallback loop (router/_fallback.py).

- `ChatStream`: a chat, always asked of the backend as a stream and judged by its progress. A
  backend gets its first-token limit (within its share of the deadline) to produce; once
  producing (content, reasoning or tool-call deltas) it keeps the stream while it meets the
  stall limit. Chunks that show no progress (the role-only first chunk) wait for the first that
  does, so a backend that fails before producing is never seen. Live (the service's true
  stream), the client holds each chunk as it comes: the producing backend may go on to the
  caller's deadline, and after a failure the next backend continues the answer
  (router/_continuation.py), every chunk keeping the first chunk's `id`, `model` and `created`.
- `Collected`: the same chat collected into one answer (the function's, and `stream: false`).
  Nothing reaches the client before the answer is whole, so a backend keeps to its share of the
  deadline (the rest is the next backend's reserve), and after a failure the next backend
  starts the answer again: the answer is one backend's, whole, with its own usage and logprobs.
- `JsonCall`: one JSON request and its JSON answer (embeddings).

A chat never ends with a `finish_reason` unless a backend finished it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from router._backends import BackendConfig, BackendName, OpenStream
from router._continuation import Fitter, Sent
from router._errors import BackendRejected
from router._fallback import Turn, refused_request
from router._retry import call_with_retries
from router._stream_read import (
    StreamLimits,
    completion_from_chunks,
    delta_of,
    makes_progress,
)

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Answer:
    """A chat collected whole from one backend: its chunks (for a buffered stream), the
    completion they fold into, and that completion as JSON text (serialised once)."""

    chunks: list[dict[str, Any]]
    completion: dict[str, Any]
    text: str


class ChatStream:
    """One chat's stream, backend after backend (a Source of chunks)."""

    def __init__(self, body_for: Callable[[BackendConfig], dict[str, Any]],
                 limits: StreamLimits, *, live: bool) -> None:
        self.body_for = body_for
        self.limits = limits
        self.live = live
        self.sent = Sent()  # what the client holds (live only)
        self.identity: dict[str, Any] | None = None

    async def attempt(self, turn: Turn) -> AsyncGenerator[dict[str, Any], None]:
        """This backend's checked chunks, from its first progress on."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = self.body_for(turn.backend.config)
        fitter, opened = await self._open_next(turn, body)
        # The end of this backend's share (for its first token, and for all of a collected
        # answer) and the caller's deadline, on the loop's clock (uvloop's need not be
        # time.monotonic's).
        now = time.monotonic()
        share_end = loop.time() + (turn.share_end - now)
        end = loop.time() + (turn.deadline.end - now) if self.live else share_end
        held: list[dict[str, Any]] = []  # chunks before this backend's first progress
        progressed = False
        produced = 0
        try:
            async for chunk in opened.chunks(self.limits, started=started, end=end,
                                             first_by=share_end):
                if turn.hop.model is None:
                    turn.hop.model = _model_of(chunk)
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
                        # A role chunk is sent once: not again after another backend's.
                        for waiting in held if self.identity is None else []:
                            yield self._stamp(waiting)
                    yield self._stamp(out)
        except BaseException:
            await opened.aclose()
            turn.hop.add_usage(None, produced)  # what it produced was spent, answer or not
            raise
        turn.hop.add_usage(await opened.finish(), produced)

    async def _open(self, turn: Turn, body: dict[str, Any]) -> OpenStream:
        async def once(timeout_s: float) -> OpenStream:
            return await turn.backend.open_stream("POST", CHAT_PATH, timeout_s=timeout_s,
                                                  first_token_s=self.limits.first_token_s,
                                                  json_body=body)

        return await call_with_retries(once, budget_end=turn.share_end,
                                       attempts=turn.retry_attempts, idempotent=False,
                                       on_attempt=turn.hop.count)

    async def _open_next(self, turn: Turn, body: dict[str, Any]
                         ) -> tuple[Fitter | None, OpenStream]:
        """Open this backend's stream: the request as it came, or (content already live at
        the client) a continuation, a replay or a restart of the answer."""
        if self.sent.tool_calls:
            return Fitter(self.sent, replay=False), await self._open(turn, body)
        if not self.sent.text:
            return None, await self._open(turn, body)
        # Continue the partial answer: the assistant's words so far, as a prefill, asking
        # only for the tokens still owed.
        prefill = {**body, "messages": [*body["messages"],
                                        {"role": "assistant", "content": self.sent.text}]}
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(prefill.get(key), int):
                prefill[key] = self.sent.owed(prefill[key])
        try:
            return None, await self._open(turn, prefill)
        except BackendRejected as exc:
            if not refused_request(exc):
                raise
        # It refuses a prefill: its whole answer again, fitted after what the client has.
        return Fitter(self.sent, replay=True), await self._open(turn, body)

    def _stamp(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """Live: the chunk, counted as the client's, with the stream's one identity (the first
        chunk's id, model, created). Collected: the chunk as it came."""
        if not self.live:
            return chunk
        self.sent.record(chunk)
        identity = self.identity
        if identity is None:
            identity = self.identity = {"id": chunk.get("id", "chatcmpl-router"),
                                        "model": chunk.get("model", ""),
                                        "created": chunk.get("created", 0)}
        if all(chunk.get(key) == value for key, value in identity.items()):
            return chunk  # its identity already (the first backend's): relayed as it came
        return {**chunk, **identity}


class Collected:
    """A chat collected into one `Answer` per backend (a Source of one item): the backend's
    chunks, read whole within its share, folded and checked (`check`, say, against the
    platform's response size) before anything is handed on."""

    def __init__(self, chat: ChatStream, check: Callable[[str, BackendName], None]) -> None:
        self.chat = chat
        self.check = check

    async def attempt(self, turn: Turn) -> AsyncGenerator[Answer, None]:
        """One whole answer from this backend, or its failure."""
        async with contextlib.aclosing(self.chat.attempt(turn)) as chunks:
            got = [chunk async for chunk in chunks]
        completion = completion_from_chunks(got)
        if turn.hop.usage is not None:
            # The backend's own usage, as it sent it: the answer is that backend's alone.
            completion["usage"] = turn.hop.usage
        text = json.dumps(completion, separators=(",", ":"))
        self.check(text, turn.backend.name)
        yield Answer(got, completion, text)


class JsonCall:
    """One JSON request, retried as the retry layer allows (a Source of one payload)."""

    def __init__(self, path: str, body_for: Callable[[BackendConfig], dict[str, Any]],
                 check: Callable[[dict[str, Any], BackendName], None], *,
                 idempotent: bool) -> None:
        self.path = path
        self.body_for = body_for
        self.check = check
        self.idempotent = idempotent

    async def attempt(self, turn: Turn) -> AsyncGenerator[dict[str, Any], None]:
        """The backend's checked answer."""
        body = self.body_for(turn.backend.config)

        async def once(timeout_s: float) -> dict[str, Any]:
            payload = await turn.backend.request("POST", self.path, timeout_s=timeout_s,
                                                 json_body=body)
            self.check(payload, turn.backend.name)
            return payload

        payload = await call_with_retries(once, budget_end=turn.share_end,
                                          attempts=turn.retry_attempts,
                                          idempotent=self.idempotent, on_attempt=turn.hop.count)
        turn.hop.add_usage(payload.get("usage"))
        turn.hop.model = _model_of(payload)
        yield payload


def _model_of(answer: dict[str, Any]) -> str | None:
    """The model a backend named in a chunk or an answer (None when it named none)."""
    model = answer.get("model")
    return model[:128] if isinstance(model, str) and model else None
