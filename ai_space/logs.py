"""Structured logging for the model server: one JSON object per line, as the router writes.

A request's path or a header can hold a newline (`GET /x%0a2099-01-01 INFO ...`); in a plain
text log that starts a forged line. Here every record, uvicorn's own included, is one JSON
object on one line: JSON escapes every control character, so no value can end the line.

Every line written while a request is served carries the W3C `traceparent` it came with (the
router's attempt span) and its `trace_id`, so the router's trace leads to the model server's
lines and back (`TraceContext`, the outermost middleware). Only a well-formed header is logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

_REDACTED = "[redacted]"
# The attributes every LogRecord has; anything else was passed in `extra=` and is a field.
# (uvicorn adds `color_message`, its msg with terminal colours: not a field.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "color_message"}


# W3C Trace Context's `traceparent` (version 00 and later: its first four fields, lower hex).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# The `traceparent` of the request being served in this task (None outside a request).
TRACEPARENT: ContextVar[str | None] = ContextVar("ai_space_traceparent", default=None)


class TraceContext:
    """ASGI middleware: the request's well-formed `traceparent`, for its log lines."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with its `traceparent` (if well-formed) set for its lines."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"traceparent", b"")[:128].decode("latin-1").strip()
        match = _TRACEPARENT.match(raw)
        token = TRACEPARENT.set(match.group(0) if match else None)
        try:
            await self.app(scope, receive, send)
        finally:
            TRACEPARENT.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object: time, level, logger, msg, and extra fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        """One line of JSON; a traceback, if any, goes inside it as `exc`."""
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        traceparent = TRACEPARENT.get()
        if traceparent is not None:
            data["traceparent"], data["trace_id"] = traceparent, traceparent[3:35]
        data.update({key: value for key, value in vars(record).items()
                     if key not in _STANDARD and not key.startswith("_")})
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
            data["exc"] = self.formatException(record.exc_info)
        text = json.dumps(data, default=str)
        for secret in self.secrets:  # defence in depth: the token is never logged on purpose
            text = text.replace(secret, _REDACTED)
        return text


def configure(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Send every logger (ai_space's, uvicorn's, the libraries') to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: here that is the front's own calls to its engines,
    # one or more per chat, which say nothing the front's own line does not.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
