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
from router._streaming import StreamFacts

log = logging.getLogger("router.stream")

STREAMING: ContextVar[bool] = ContextVar("router_streaming", default=False)


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def relay(first: dict[str, Any], chunks: AsyncGenerator[dict[str, Any], None],
                facts: StreamFacts, *, include_usage: bool = False) -> AsyncIterator[str]:
    """Each chunk as it comes; then a chunk carrying `x_chat` (and `usage`, when the client
    asked for it and the backend sent it), then `[DONE]`.

    A failure after the headers went out (no backend could finish the answer) ends the stream
    with an `error` event and no `[DONE]`: the client sees a failure, never a truncated answer
    that looks finished.
    """
    try:
        yield sse(first)
        async for chunk in chunks:
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
    last: dict[str, Any] = {"id": first.get("id", "chatcmpl-router"),
                            "object": "chat.completion.chunk", "created": first.get("created", 0),
                            "model": first.get("model", ""), "choices": []}
    if include_usage and facts.usage is not None:
        last["usage"] = facts.usage
    yield sse({**last, "x_chat": facts.as_dict()})
    yield "data: [DONE]\n\n"
