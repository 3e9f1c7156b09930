"""Structured logging for the model server: one JSON object per line, as the router writes.

A request's path or a header can hold a newline (`GET /x%0a2099-01-01 INFO ...`); in a plain
text log that starts a forged line. Here every record, uvicorn's own included, is one JSON
object on one line: JSON escapes every control character, so no value can end the line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

_REDACTED = "[redacted]"
# The attributes every LogRecord has; anything else was passed in `extra=` and is a field.
# (uvicorn adds `color_message`, its msg with terminal colours: not a field.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "color_message"}


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
