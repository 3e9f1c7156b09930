"""Reading a backend's OpenAI chunk stream, with the checks that make a stream a success.

A stream succeeds only when a chunk carries a `finish_reason`. No content within the first-token
limit, no chunk within the stall limit, a cut (the body ends first), an `{"error": ...}` event
or a malformed chunk is a `BackendError`, so the engine fails over. Every chat is read this way,
whether it goes to the client chunk by chunk or is collected into one answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from router._errors import BackendProtocolError, BackendTimeout, BackendUnavailable


class StreamCut(BackendUnavailable):
    """The stream ended (or failed) before any `finish_reason`."""


class StreamStalled(BackendTimeout):
    """No first content, or no next chunk, within its limit."""


class StreamOutOfTime(BackendTimeout):
    """The stream was still producing when its time ran out: the caller's deadline (or, on
    the function's buffered path, the attempt's share). Never evidence against the backend."""


class StreamErrorEvent(BackendUnavailable):
    """The backend sent an `{"error": ...}` event inside the stream."""


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Seconds allowed before the first content, and between two chunks."""

    first_token_s: float
    stall_s: float


class SseParser:
    """Splits bytes into `data:` payloads (strings), across chunk boundaries."""

    def __init__(self) -> None:
        self._buffer = b""
        # Events that came in the same read as the finish chunk (usage, `[DONE]`).
        self.rest: list[str] = []

    def partial(self) -> bool:
        """Whether an event was begun but never ended."""
        return bool(self._buffer.strip())

    def feed(self, data: bytes) -> list[str]:
        """The complete events' data in `data` (and what was left before)."""
        self._buffer += data.replace(b"\r\n", b"\n")
        out: list[str] = []
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if lines:
                out.append(b"\n".join(lines).decode("utf-8", "replace"))
        return out


class Chunk(dict[str, Any]):
    """A checked chunk, and its event's data as the backend wrote it (`raw`; None when it
    spans lines): relayed unchanged, that text goes out as it came, not encoded again."""

    __slots__ = ("raw",)
    raw: str | None


def check_chunk(data: str, backend: str) -> dict[str, Any] | None:
    """One event's data as a chunk object, None for `[DONE]`; raise what a bad one means."""
    if data.strip() == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        raise BackendProtocolError(f"{backend}: malformed stream chunk", backend=backend) from None
    if isinstance(chunk, dict) and "error" in chunk:
        raise StreamErrorEvent(f"{backend}: error event in the stream", backend=backend)
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise BackendProtocolError(f"{backend}: stream chunk without choices", backend=backend)
    for choice in choices:
        delta = choice.get("delta", {})
        if not isinstance(delta, dict) or not isinstance(delta.get("content"), str | None) \
                or not isinstance(delta.get("reasoning_content"), str | None) \
                or not isinstance(delta.get("tool_calls"), list | None):
            raise BackendProtocolError(f"{backend}: malformed stream delta", backend=backend)
    checked = Chunk(chunk)
    checked.raw = None if "\n" in data or "\r" in data else data.strip()
    return checked


def delta_of(chunk: dict[str, Any]) -> dict[str, Any]:
    """The chunk's first delta (empty when it has none)."""
    choices = chunk.get("choices") or [{}]
    delta = choices[0].get("delta")
    return delta if isinstance(delta, dict) else {}


def content_of(chunk: dict[str, Any]) -> str:
    """The text a chunk adds."""
    return str(delta_of(chunk).get("content") or "")


def makes_progress(chunk: dict[str, Any]) -> bool:
    """Whether a chunk shows the backend producing: content, reasoning or a tool-call delta,
    or the finish_reason. A role-only or empty chunk does not."""
    delta = delta_of(chunk)
    return bool(delta.get("content") or delta.get("reasoning_content")
                or delta.get("tool_calls") or finish_of(chunk))


def finish_of(chunk: dict[str, Any]) -> str | None:
    """The chunk's `finish_reason`, if any."""
    choices = chunk.get("choices") or [{}]
    reason = choices[0].get("finish_reason")
    return str(reason) if reason else None


class ReadWatch:
    """One timer per stream for its reads' limits (a new `asyncio.timeout` per read would
    schedule and cancel a timer for every chunk: two heap operations per token).

    Each read says when it must have ended (`arm`); the one timer, scheduled for the earliest
    limit, finds on firing whether the read in flight is past its own limit, and cancels the
    reading task only then. Otherwise it waits for that read's limit, or for the next read to
    arm it. A chunk every 20 ms with an 8 s stall limit fires it once in 8 s, not 50 times a
    second. Limits between reads (while the caller handles a chunk) never run.
    """

    # A timer may run a little before its time (the loop's clock resolution; uvloop counts
    # milliseconds): within this much of its limit, a read is over it.
    SLACK_S = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.read_by = 0.0
        self.reading: asyncio.Task[Any] | None = None
        self.fired = False
        self.cancelling = 0
        self._when = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, read_by: float) -> None:
        """A read starts, in the current task, and must end by `read_by` (the loop's clock)."""
        task = asyncio.current_task()
        self.reading, self.read_by = task, read_by
        self.cancelling = task.cancelling() if task is not None else 0
        if self._timer is None or read_by < self._when:
            self._schedule(read_by)

    def disarm(self) -> bool:
        """The read ended; whether this watch cancelled it (then the task is uncancelled, as
        `asyncio.timeout` does, unless someone else cancelled it too)."""
        task, self.reading = self.reading, None
        if not self.fired:
            return False
        self.fired = False
        return task is None or task.uncancel() <= self.cancelling

    def close(self) -> None:
        """The stream ended: no timer outlives it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reading = None

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when, self._timer = when, self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        task = self.reading
        if task is None:
            return  # between reads: the next read arms it again
        if self.loop.time() + self.SLACK_S < self.read_by:
            self._schedule(self.read_by)  # a later read's limit
            return
        self.fired = True
        task.cancel()


async def read_chunks(body: AsyncIterator[bytes], backend: str, limits: StreamLimits, *,
                      started: float, end: float, first_by: float | None = None,
                      parser: SseParser | None = None) -> AsyncIterator[dict[str, Any]]:
    """Yield each checked chunk as it arrives, up to and including the one with the
    `finish_reason` (then stop at once: no wait for a `[DONE]` that may never come).

    A stream is judged by its progress: before its first content (reasoning and tool-call
    deltas count) it has the first-token limit, and no more than `first_by`, the end of its
    share; once producing, each chunk has the stall limit, up to `end`. All three are on the
    loop's clock. Running into `end` while producing is `StreamOutOfTime`, not a stall. Each
    read has its own limit, so no timer runs while the caller handles a chunk.
    """
    loop = asyncio.get_running_loop()
    parser = parser or SseParser()
    seen_content = False
    first_end = end if first_by is None else min(first_by, end)
    watch = ReadWatch(loop)
    try:
        while True:
            if seen_content:
                read_by, what = loop.time() + limits.stall_s, "stalled"
                out_of_time = end < read_by
                read_by = min(read_by, end)
            else:
                read_by, what = min(started + limits.first_token_s, first_end), \
                    "no first token in time"
                out_of_time = False
            watch.arm(read_by)
            try:
                data = await anext(body)
            except StopAsyncIteration:
                watch.disarm()
                if parser.partial():  # a chunk cut in the middle: never passed on
                    raise BackendProtocolError(f"{backend}: stream cut inside a chunk",
                                               backend=backend) from None
                raise StreamCut(f"{backend}: stream ended without a finish_reason",
                                backend=backend) from None
            except asyncio.CancelledError:
                if not watch.disarm():
                    raise  # the caller's cancel (a client gone), not a limit
                if out_of_time:
                    raise StreamOutOfTime(f"{backend}: out of time while producing",
                                          backend=backend) from None
                raise StreamStalled(f"{backend}: stream {what}", backend=backend) from None
            watch.disarm()
            events = parser.feed(data)
            for index, event in enumerate(events):
                chunk = check_chunk(event, backend)
                if chunk is None:
                    raise StreamCut(f"{backend}: [DONE] without a finish_reason",
                                    backend=backend)
                seen_content = seen_content or makes_progress(chunk)
                yield chunk
                if finish_of(chunk):
                    parser.rest = events[index + 1:]
                    return
    finally:
        watch.close()


def usage_in(events: Iterable[str]) -> dict[str, Any] | None:
    """The `usage` object of the events after the finish chunk, if one carries it."""
    usage = None
    for event in events:
        try:
            chunk = json.loads(event)
        except (ValueError, RecursionError):
            continue
        if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
    return usage


def completion_from_chunks(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Fold checked chunks into one `chat.completion` object: content, reasoning, tool calls,
    a refusal, and the logprobs of each, as the stream carried them."""
    text: list[str] = []
    reasoning: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    logprobs: dict[str, list[Any]] | None = None
    first: dict[str, Any] = {}
    finish = "stop"
    for chunk in chunks:
        first = first or chunk
        delta = delta_of(chunk)
        text.append(content_of(chunk))
        reasoning.append(str(delta.get("reasoning_content") or ""))
        refusal.append(str(delta.get("refusal") or ""))
        _fold_tool_calls(calls, delta.get("tool_calls") or [])
        logprobs = _fold_logprobs(logprobs, (chunk.get("choices") or [{}])[0].get("logprobs"))
        finish = finish_of(chunk) or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if any(refusal):
        message["refusal"] = "".join(refusal)
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
        message["content"] = message["content"] or None  # as OpenAI answers a tool call
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "message": message}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs["content"] or None,
                              "refusal": logprobs["refusal"] or None}
    out: dict[str, Any] = {
        "id": first.get("id", "chatcmpl-router"), "object": "chat.completion",
        "created": first.get("created", 0), "model": first.get("model", ""),
        "choices": [choice],
    }
    if first.get("system_fingerprint"):
        out["system_fingerprint"] = first["system_fingerprint"]
    return out


def _fold_logprobs(total: dict[str, list[Any]] | None, part: Any) -> dict[str, list[Any]] | None:
    """Add one chunk's `logprobs` (`{"content": [...], "refusal": [...]}`) to the answer's."""
    if not isinstance(part, dict):
        return total
    total = total or {"content": [], "refusal": []}
    for key in ("content", "refusal"):
        if isinstance(part.get(key), list):
            total[key] += part[key]
    return total


def _fold_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[Any]) -> None:
    """Add tool-call deltas (id and name once, arguments in pieces) to the calls by index."""
    for delta in deltas:
        if not isinstance(delta, dict):
            continue
        index, function = delta.get("index"), delta.get("function")
        call = calls.setdefault(index if isinstance(index, int) else 0, {
            "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = delta.get("id") or call["id"]
        call["type"] = delta.get("type") or call["type"]
        for key in ("name", "arguments"):
            if isinstance(function, dict) and isinstance(function.get(key), str):
                call["function"][key] += function[key]


def chunks_of_completion(completion: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    """A whole `chat.completion` (a backend that answered JSON when asked to stream) as the
    chunks a stream of it would carry: its message's every field as one delta, with its
    logprobs, then the finish. Folded again, they give the same message."""
    base = {"id": completion.get("id", "chatcmpl-router"), "object": "chat.completion.chunk",
            "created": completion.get("created", 0), "model": completion.get("model", "")}
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), str | None) \
            or not isinstance(message.get("tool_calls"), list | None):
        raise BackendProtocolError("answer has no message", backend=backend)
    delta: dict[str, Any] = {**message, "role": "assistant",
                             "content": str(message.get("content") or "")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": index, **call} if isinstance(call, dict) else call
                               for index, call in enumerate(message["tool_calls"])]
    body: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
    if isinstance(choice.get("logprobs"), dict):
        body["logprobs"] = choice["logprobs"]
    return [{**base, "choices": [body]},
            {**base, "choices": [{"index": 0, "delta": {},
                                  "finish_reason": choice.get("finish_reason") or "stop"}]}]
