"""The chat router: routing with deadline-bounded fallback between a worker and a Space."""

from router.app import ChatRouter
from router.config import Settings
from router.deadline import Deadline
from router.do_event import FunctionContext, WebFunction, read_event, to_do_response
from router.errors import (
    BackendError,
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    NoBackend,
    RouterError,
)
from router.http_types import HttpRequest, HttpResponse
from router.policy import Decision, Policy

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
    "WebFunction",
    "read_event",
    "to_do_response",
]
