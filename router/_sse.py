"""Buffered server-sent events: a finished completion rendered as an OpenAI chunk stream.

A DigitalOcean web function returns one body, so `stream: true` cannot trickle; it answers with
the whole stream at once, in the exact format the openai client parses.
"""

from __future__ import annotations

import json
from typing import Any


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def completion_to_sse(completion: dict[str, Any], *, include_usage: bool) -> str:
    """Render a `chat.completion` object as a `chat.completion.chunk` event stream."""
    base = {
        "id": completion.get("id", "chatcmpl-router"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    choice = completion["choices"][0]
    message = choice.get("message") or {}
    content = message.get("content") or ""
    parts = [
        _event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]}),
    ]
    if message.get("reasoning_content"):
        parts.append(_event({**base, "choices": [{"index": 0, "delta": {
            "reasoning_content": message["reasoning_content"]}, "finish_reason": None}]}))
    if message.get("tool_calls"):
        calls = [{"index": index, **call} for index, call in enumerate(message["tool_calls"])]
        parts.append(_event({**base, "choices": [{"index": 0, "delta": {"tool_calls": calls},
                                                  "finish_reason": None}]}))
    if content:
        parts.append(_event({**base, "choices": [{"index": 0, "delta": {"content": content},
                                                  "finish_reason": None}]}))
    parts.append(_event({**base, "choices": [{"index": 0, "delta": {},
                                              "finish_reason": choice.get("finish_reason")
                                              or "stop"}]}))
    if include_usage and isinstance(completion.get("usage"), dict):
        parts.append(_event({**base, "choices": [], "usage": completion["usage"]}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts)
