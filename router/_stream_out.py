"""The service's side of a true stream: chunks out as SSE, the `x_chat` facts last.

`STREAMING` is set by the service (router_service) for the request it serves: only then
does `stream: true` stream for real. The function leaves it unset and answers a buffered stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextvars import ContextVar
from typing import Any

from router._errors import RouterError
from router._status import status_for
from router._stream_read import finish_of
from router._streaming import StreamFacts

log = logging.getLogger("router.stream")

STREAMING: ContextVar[bool] = ContextVar("router_streaming", default=False)


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def relay(first: dict[str, Any], chunks: AsyncGenerator[dict[str, Any], None],
                facts: StreamFacts, *, include_usage: bool = False) -> AsyncIterator[str]:
    """Each chunk as it comes, the one with the `finish_reason` last, carrying `x_chat` (so
    every chunk has `choices[0]`, as the common `chunk.choices[0].delta` loop expects); then,
    only when the client asked for `include_usage`, OpenAI's empty-`choices` usage chunk
    (covering every backend that produced the answer); then `[DONE]`.

    A failure after the headers went out (no backend could finish the answer) ends the stream
    with an `error` event and no `[DONE]`: the client sees a failure, never a truncated answer
    that looks finished.
    """
    ending = first if finish_of(first) else None
    try:
        if ending is None:
            yield sse(first)
        async for chunk in chunks:
            if finish_of(chunk):
                ending = chunk  # sent once the facts are complete, when the run ends
            else:
                yield sse(chunk)
    except RouterError as exc:
        _, kind = status_for(exc)
        log.warning("stream failed after content", extra={"fields": {
            "code": exc.code, "attempts": facts.attempts}})
        yield sse({"error": {"type": kind, "message": exc.message, "code": exc.code},
                   "x_chat": facts.as_dict()})
        return
    finally:
        # A client that hung up closes this relay: close the backend's stream now too.
        await chunks.aclose()
    if ending is None:  # never: a run ends only after a finish_reason
        ending = {**first, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield sse({**ending, "x_chat": facts.as_dict()})
    if include_usage and facts.usage is not None:
        yield sse({"id": first.get("id", "chatcmpl-router"), "object": "chat.completion.chunk",
                   "created": first.get("created", 0), "model": first.get("model", ""),
                   "choices": [], "usage": facts.usage})
    yield "data: [DONE]\n\n"

