"""Structured logging: one JSON line per event, with every configured secret scrubbed."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from router._config import Settings

_REDACTED = "[redacted]"


def timestamp(created: float) -> str:
    """RFC 3339 in UTC, to the millisecond (`2026-12-07T01:02:03.456Z`): ai_space's `time`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats `extra={"fields": {...}}` records as one JSON object per line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a URL is scrubbed before a token that is part of it.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        """One line of JSON: time, level, logger, message and the record's fields."""
        data: dict[str, object] = {"time": timestamp(record.created),
                                   "level": record.levelname.lower(), "logger": record.name,
                                   "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
        return self.scrub(json.dumps(data, default=str))

    def scrub(self, text: str) -> str:
        """Replace every secret in `text` (defence in depth: we never log them on purpose)."""
        for secret in self.secrets:
            text = text.replace(secret, _REDACTED)
        return text


def configure_logging(settings: Settings, also: Iterable[str] = ()) -> None:
    """Send the `router` logger (and the loggers named in `also`: the service's server's) to
    stderr as JSON lines; quiet httpx, which logs URLs."""
    formatter = JsonFormatter(settings.secrets())
    for name in ("router", *also):
        logger = logging.getLogger(name)
        handler = next((h for h in logger.handlers if getattr(h, "_router_handler", False)),
                       None)
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler._router_handler = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        handler.setFormatter(formatter)
        if name == "router":
            logger.setLevel(settings.log_level.upper())
            logger.propagate = True
        else:
            logger.propagate = False  # one line each, not a second one from the root
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
