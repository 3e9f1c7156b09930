"""The one place where our errors become HTTP statuses and JSON error bodies."""

from __future__ import annotations

from router._errors import (
    AnswerTooLarge,
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NoBackend,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RouterError,
    Unauthorized,
)
from router._http_types import HttpResponse

STATUS: dict[type[RouterError], tuple[int, str]] = {
    BadRequest: (400, "invalid_request_error"),
    Unauthorized: (401, "authentication_error"),
    Forbidden: (403, "permission_error"),
    NotFound: (404, "not_found_error"),
    MethodNotAllowed: (405, "invalid_request_error"),
    PayloadTooLarge: (413, "invalid_request_error"),
    RateLimited: (429, "rate_limit_error"),
    NoBackend: (503, "service_unavailable"),
    ConfigError: (503, "service_unavailable"),
    DeadlineExceeded: (504, "timeout_error"),
    InternalError: (500, "api_error"),
    AnswerTooLarge: (502, "api_error"),
    RouterError: (502, "api_error"),
}


def status_for(exc: RouterError) -> tuple[int, str]:
    """The HTTP status and OpenAI-style error type for an error, by its nearest class."""
    for klass in type(exc).__mro__:
        if klass in STATUS:
            return STATUS[klass]
    return STATUS[RouterError]  # pragma: no cover - RouterError is in the table


def error_response(exc: RouterError) -> HttpResponse:
    """The documented JSON error: `{"error": {"type", "message", "code"}}`."""
    status, kind = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, NoBackend | RateLimited):
        headers["retry-after"] = str(exc.retry_after_s)
    elif isinstance(exc, ConfigError):
        headers["retry-after"] = "60"
    return HttpResponse.json(status, {"error": {"type": kind, "message": exc.message,
                                                "code": exc.code}}, headers)
