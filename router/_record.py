"""The record of one answered request, as the observers (metrics, traces) count it.

Imported only when an observer is active (router/_app.py loads it then): the function without
one never pays for making the class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, as an operator counts it: never a prompt, token, key or URL."""

    method: str
    path: str
    status: int
    route: str | None
    backend: str | None
    fallback: str | None
    attempts: int
    # Seconds from the request's arrival to its whole answer (a stream's last chunk).
    duration_s: float
    # Our error code for a refusal or failure (`rate_limited`, `deadline_exceeded`...); for a
    # true stream (status 200, its headers long gone), the error event that ended it.
    code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    streamed: bool = False
    # A true stream's first chunk (the first token a client sees), from the request's arrival.
    first_token_s: float | None = None


def usage_counts(usage: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of an OpenAI `usage` object, or Nones when absent."""
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None)


def error_code(status: int, body: str) -> str | None:
    """Our JSON error's `code` for an error answer (the bodies are small), else None."""
    if status < 400 or not body.startswith("{"):
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def int_or_zero(value: str | None) -> int:
    """A header's integer (x-chat-attempts), or 0."""
    return int(value) if value and value.isdigit() else 0


def stream_error_code(last_event: str) -> str | None:
    """The code of the `error` event a true stream ended with (no backend could finish it),
    or None when it ended well."""
    if not last_event.startswith('data: {"error"'):
        return None
    return error_code(500, last_event[6:])
