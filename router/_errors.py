"""The router's exception tree. The edge (`do_event.py`) alone maps these to HTTP statuses."""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router raises on purpose."""

    code = "router_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(RouterError):
    """The settings are missing or invalid; the router cannot serve."""

    code = "misconfigured"


class BadRequest(RouterError):
    """The caller sent something we will not forward."""

    code = "bad_request"


class NotFound(RouterError):
    """No such path or method."""

    code = "not_found"


class MethodNotAllowed(RouterError):
    """The path exists, but not for this method."""

    code = "method_not_allowed"


class Unauthorized(RouterError):
    """A required API key or client token is missing or wrong."""

    code = "invalid_api_key"


class Forbidden(RouterError):
    """The browser origin is not on the CORS allowlist."""

    code = "origin_not_allowed"


class RateLimited(RouterError):
    """The caller used up its RATE_LIMIT_PER_MINUTE; it may retry after `retry_after_s`."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(RouterError):
    """The body is larger than the configured limit."""

    code = "payload_too_large"


class DeadlineExceeded(RouterError):
    """The request's deadline ran out before any backend answered."""

    code = "deadline_exceeded"

    def __init__(self, message: str, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class NoBackend(RouterError):
    """Every backend failed, or is skipped, and time remains: the caller may retry later."""

    code = "no_backend"

    def __init__(self, message: str, *, retry_after_s: int, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reasons = reasons


class InternalError(RouterError):
    """A bug in the router itself, caught at the edge."""

    code = "internal_error"


class BackendError(RouterError):
    """One backend failed one attempt. `reason` is the `X-Chat-Fallback` value it causes.

    `sent` says whether the request may have reached the backend (and so may be billed);
    `retryable` says whether the same backend may be tried again within the budget.
    """

    code = "backend_error"
    reason = "error"
    # A generation that may have run is sent again once only for this (a 500 from our own
    # servers, which bill by the minute, not the request).
    resend_once = False

    def __init__(self, message: str, *, backend: str, sent: bool = True, retryable: bool = False,
                 retry_after_s: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.sent = sent
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status


class BackendTimeout(BackendError):
    """No complete answer within the attempt's share of the deadline."""

    reason = "timeout"


class NoTimeLeft(BackendTimeout):
    """The attempt was never made: the deadline left it no time. Never the backend's fault."""


class BackendUnavailable(BackendError):
    """Connection refused or reset, or a 5xx from the backend."""

    reason = "unavailable"


class NotReady(BackendError):
    """A Space or an Inference Endpoint that is not running (asleep, starting, scaled to zero,
    paused): it answers fast, and is worth a wake and an early probe."""


class SpaceSleeping(NotReady):
    """The Space answered with Hugging Face's sleeping page."""

    reason = "space_sleeping"


class SpaceStarting(NotReady):
    """The Space is starting or broken: 502/503/504, or a non-JSON page."""

    reason = "space_starting"


class EndpointStarting(NotReady):
    """An Inference Endpoint is not serving: Hugging Face's proxy answers 503 while a replica
    initializes (after a scale to zero, a request starts one), and 502 or 503 when paused."""

    reason = "endpoint_starting"


class BackendServerError(BackendUnavailable):
    """The backend answered 500: retried once on the same backend when the budget allows."""

    resend_once = True


class BackendRateLimited(BackendError):
    """The backend answered 429."""

    reason = "rate_limited"


class BackendRejected(BackendError):
    """The backend refused the request with a 4xx other than 429; `provider_code` and
    `provider_message` are its own error's: the code checked, the message still to be scrubbed
    and cut (router/_classify.py `scrub_message`) before it reaches a caller."""

    reason = "error"
    provider_code: str | None = None
    provider_message: str | None = None


class BackendProtocolError(BackendError):
    """The backend answered, but not with the JSON the protocol promises."""

    reason = "error"


class ResponseTooLarge(BackendProtocolError):
    """The backend's answer would not fit the platform's response limit."""

    code = "response_too_large"


class AnswerTooLarge(RouterError):
    """Every backend that answered gave an answer too large to send: a 502, not the caller's
    fault (413 would say that its request was too large)."""

    code = "response_too_large"


class OverBudget(BackendError):
    """The caller used up its GPU budget (LLM_RATE_LIMIT_PER_MINUTE): the Space is skipped."""

    reason = "quota"


class CircuitOpen(BackendError):
    """The backend failed repeatedly and is skipped until its cool-down ends."""

    reason = "circuit_open"
