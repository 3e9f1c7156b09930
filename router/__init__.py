"""The chat router: routing with deadline-bounded fallback between a worker and a Space.

The public surface is below: what the function's entries, the service (`router_service`), the
tools (`router_tools`) and the benchmarks use; everything else lives in private modules
(`router._*`), which no other package imports (an import-linter contract says so). Names load
on first use (PEP 562), so `from router import WebFunction` imports the DigitalOcean edge and
what it needs, not the whole router: the `ask` function's cold start depends on it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router._access import Admission
    from router._app import ChatRouter
    from router._backends import backend_configs
    from router._config import Settings, is_unset
    from router._deadline import Deadline
    from router._do_event import FunctionContext, WebFunction, read_event, to_do_response
    from router._errors import (
        BackendError,
        BadRequest,
        ConfigError,
        DeadlineExceeded,
        NoBackend,
        PayloadTooLarge,
        RouterError,
    )
    from router._http_types import Edge, HttpRequest, HttpResponse
    from router._hub import HubClient
    from router._logs import configure_logging
    from router._policy import Decision, Policy
    from router._record import RequestRecord
    from router._schedule import Schedule
    from router._schema import ChatRequest
    from router._status import error_response
    from router._telemetry import Observer
    from router._wake import READY_STAGES, STARTING_STAGES, HubError, Runtime, stage_of, wake_space
    from router._warmup import WarmupFunction

__all__ = [
    "READY_STAGES",
    "STARTING_STAGES",
    "Admission",
    "BackendError",
    "BadRequest",
    "ChatRequest",
    "ChatRouter",
    "ConfigError",
    "Deadline",
    "DeadlineExceeded",
    "Decision",
    "Edge",
    "FunctionContext",
    "HttpRequest",
    "HttpResponse",
    "HubClient",
    "HubError",
    "NoBackend",
    "Observer",
    "PayloadTooLarge",
    "Policy",
    "RequestRecord",
    "RouterError",
    "Runtime",
    "Schedule",
    "Settings",
    "WarmupFunction",
    "WebFunction",
    "backend_configs",
    "configure_logging",
    "error_response",
    "is_unset",
    "read_event",
    "stage_of",
    "to_do_response",
    "wake_space",
]

_HOME = {
    "Admission": "_access",
    "BackendError": "_errors",
    "BadRequest": "_errors",
    "ChatRequest": "_schema",
    "ChatRouter": "_app",
    "ConfigError": "_errors",
    "Deadline": "_deadline",
    "DeadlineExceeded": "_errors",
    "Decision": "_policy",
    "Edge": "_http_types",
    "FunctionContext": "_do_event",
    "HttpRequest": "_http_types",
    "HttpResponse": "_http_types",
    "HubClient": "_hub",
    "HubError": "_wake",
    "NoBackend": "_errors",
    "Observer": "_telemetry",
    "PayloadTooLarge": "_errors",
    "Policy": "_policy",
    "READY_STAGES": "_wake",
    "RequestRecord": "_record",
    "RouterError": "_errors",
    "Runtime": "_wake",
    "STARTING_STAGES": "_wake",
    "Schedule": "_schedule",
    "Settings": "_config",
    "WarmupFunction": "_warmup",
    "WebFunction": "_do_event",
    "backend_configs": "_backends",
    "configure_logging": "_logs",
    "error_response": "_status",
    "is_unset": "_config",
    "read_event": "_do_event",
    "stage_of": "_wake",
    "to_do_response": "_do_event",
    "wake_space": "_wake",
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
