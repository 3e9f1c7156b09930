"""One error tree for the server, and the one place that turns errors into HTTP answers."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ai_space")


class APIError(Exception):
    """An error with an HTTP status and an OpenAI-style type and code."""

    status = 500
    type = "server_error"
    code = "internal_error"
    retry_after: int | None = None
    param: str | None = None  # the request field at fault, as OpenAI names it

    def __init__(self, message: str, *, code: str | None = None,
                 retry_after: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after
        if param is not None:
            self.param = param


class BadRequest(APIError):
    """The request is malformed or asks for something the server cannot do."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unsupported(BadRequest):
    """A documented OpenAI field this server (or this engine) cannot honour: never ignored."""

    code = "unsupported_parameter"

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"{param} is not supported by this server: {why}", param=param)


class Unauthorized(APIError):
    """The bearer token is missing or wrong."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(APIError):
    """No such route or model."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(APIError):
    """The body is larger than MAX_BODY_BYTES."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class QueueFull(APIError):
    """Every generation slot and queue place is taken."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    retry_after = 2


class NotReady(APIError):
    """The model is still loading, or failed to load."""

    status = 503
    type = "service_unavailable"
    code = "model_loading"
    retry_after = 10


_ENVELOPE = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["type", "message", "code"],
    "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                   "code": {"type": "string"}, "param": {}, "status": {"type": "integer"}}}}}

# What the OpenAPI document says every route may answer besides its 200 (FastAPI alone would
# document a 422 that is never sent, and none of these).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"schema": _ENVELOPE}}}
    for status, description in [
        (400, "invalid request"), (401, "missing or invalid bearer token"),
        (404, "no such route or model"), (405, "method not allowed"),
        (413, "request body too large"), (429, "queue full (Retry-After)"),
        (503, "model loading or failed (Retry-After)"),
    ]
}


def error_body(status: int, type_: str, message: str, code: str,
               param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"type": type_, "message": message, "code": code, "param": param,
                      "status": status}}


def error_response(exc: APIError) -> JSONResponse:
    """Render an APIError as a JSON answer, with Retry-After when it has one."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(exc.status, exc.type, exc.message, exc.code, exc.param),
                        status_code=exc.status, headers=headers)


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Map every exception to an OpenAI-style JSON error; never leak internals."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI answers 422; OpenAI clients expect 400 for a bad body.
        assert isinstance(exc, RequestValidationError)
        return error_response(BadRequest(_describe(list(exc.errors()))))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(NotFound("no such route"))
        # Starlette's own errors (405 and the like): keep the status, use our envelope.
        err = APIError(str(exc.detail), code="http_error")
        if exc.status_code < 500:
            err = BadRequest(str(exc.detail), code="http_error")
        err.status = exc.status_code
        response = error_response(err)
        # Keep Starlette's own headers: a 405 must say which methods are allowed (`Allow`).
        response.headers.update(exc.headers or {})
        return response

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        # Never the exception's text in the answer: a request id links it to the log.
        request_id = uuid.uuid4().hex[:16]
        log.error("unhandled error on %s %s, request id %s", request.method,
                  request.url.path, request_id, exc_info=exc)
        response = error_response(APIError(f"internal server error (request id {request_id})"))
        response.headers["X-Request-Id"] = request_id
        return response

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)
