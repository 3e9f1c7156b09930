"""A chat's chunks as server-sent events, the way OpenAI's clients read them: the service's
true stream (`relay`, chunk by chunk) and the function's buffered one (`buffered`, one body),
written by the same `SseWriter`.

The chunk with the `finish_reason` goes last and carries `x_chat` (so every chunk has
`choices[0]`, as the common `chunk.choices[0].delta` loop expects); then, only when the client
asked for `include_usage`, OpenAI's empty-`choices` usage chunk (covering every backend whose
words the answer holds); then `[DONE]`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

from router._errors import RouterError
from router._record import RequestRecord
from router._status import status_for
from router._stream_read import Chunk, finish_of

log = logging.getLogger("router.stream")
DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    """One server-sent event; a backend's chunk relayed unchanged, as the backend wrote it."""
    if type(data) is Chunk and data.raw is not None:
        return f"data: {data.raw}\n\n"
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class SseWriter:
    """Writes one answer's events; `x_chat` and the usage come from the request's record."""

    def __init__(self, record: RequestRecord, *, include_usage: bool) -> None:
        self.record = record
        self.include_usage = include_usage
        self.first: dict[str, Any] | None = None
        self.ending: dict[str, Any] | None = None

    def chunk(self, chunk: dict[str, Any]) -> str:
        """The event for one chunk ("" for the finish chunk: it is held for `end`)."""
        self.first = self.first or chunk
        if finish_of(chunk):
            self.ending = chunk  # sent once the record is complete, at the end
            return ""
        return sse(chunk)

    def end(self) -> str:
        """The finish chunk with `x_chat`, the usage chunk if asked for, and `[DONE]`."""
        first = self.first or {}
        ending = self.ending or {**first, "choices": [{"index": 0, "delta": {},
                                                       "finish_reason": "stop"}]}
        out = sse({**ending, "x_chat": self.record.x_chat()})
        usage = self.record.usage(answered_only=True)
        if self.include_usage and usage is not None:
            out += sse({"id": first.get("id", "chatcmpl-router"),
                        "object": "chat.completion.chunk", "created": first.get("created", 0),
                        "model": first.get("model", ""), "choices": [], "usage": usage})
        return out + DONE

    def error(self, exc: RouterError) -> str:
        """The event that ends a stream no backend could finish: an `error`, no `[DONE]`, so
        the client sees a failure, never a truncated answer that looks finished."""
        _, kind = status_for(exc)
        self.record.code = exc.code
        return sse({"error": {"type": kind, "message": exc.message, "code": exc.code},
                    "x_chat": self.record.x_chat()})


def buffered(chunks: Iterable[dict[str, Any]], writer: SseWriter) -> str:
    """A whole answer's events as one body (a web function returns one body)."""
    return "".join(writer.chunk(chunk) for chunk in chunks) + writer.end()


async def relay(first: dict[str, Any], chunks: AsyncGenerator[dict[str, Any], None],
                writer: SseWriter) -> AsyncIterator[str]:
    """Each chunk's event as it comes (`first` is in hand already), then the end; a failure
    after the headers went out ends the stream with the error event."""
    try:
        text = writer.chunk(first)
        if text:
            yield text
        async for chunk in chunks:
            text = writer.chunk(chunk)
            if text:
                yield text
    except RouterError as exc:
        record = writer.record
        log.warning("stream failed after content", extra={"fields": {
            **record.ids(), "code": exc.code, "attempts": record.attempts}})
        yield writer.error(exc)
        return
    finally:
        # A client that hung up closes this relay: close the backend's stream now too.
        await chunks.aclose()
    yield writer.end()
