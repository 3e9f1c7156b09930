"""The chat router: routing with deadline-bounded fallback between a worker and a Space.

The public surface is below; everything else lives in private modules (`router._*`). Names load
on first use (PEP 562), so `from router import WebFunction` imports the DigitalOcean edge and
what it needs, not the whole router: the `ask` function's cold start depends on it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router._app import ChatRouter
    from router._config import Settings
    from router._deadline import Deadline
    from router._do_event import FunctionContext, WebFunction, read_event, to_do_response
    from router._errors import (
        BackendError,
        BadRequest,
        ConfigError,
        DeadlineExceeded,
        NoBackend,
        RouterError,
    )
    from router._http_types import HttpRequest, HttpResponse
    from router._policy import Decision, Policy
    from router._warmup import WarmupFunction

__all__ = [
    "BackendError",
    "BadRequest",
    "ChatRouter",
    "ConfigError",
    "Deadline",
    "DeadlineExceeded",
    "Decision",
    "FunctionContext",
    "HttpRequest",
    "HttpResponse",
    "NoBackend",
    "Policy",
    "RouterError",
    "Settings",
    "WarmupFunction",
    "WebFunction",
    "read_event",
    "to_do_response",
]

_HOME = {
    "BackendError": "_errors",
    "BadRequest": "_errors",
    "ChatRouter": "_app",
    "ConfigError": "_errors",
    "Deadline": "_deadline",
    "DeadlineExceeded": "_errors",
    "Decision": "_policy",
    "FunctionContext": "_do_event",
    "HttpRequest": "_http_types",
    "HttpResponse": "_http_types",
    "NoBackend": "_errors",
    "Policy": "_policy",
    "RouterError": "_errors",
    "Settings": "_config",
    "WarmupFunction": "_warmup",
    "WebFunction": "_do_event",
    "read_event": "_do_event",
    "to_do_response": "_do_event",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use, and keep the name here."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"router.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names."""
    return sorted(__all__)
