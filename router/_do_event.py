"""The DigitalOcean edge: the raw web event in, the function's response dict out."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from router._config import Settings
from router._container import PerContainer
from router._errors import BadRequest, InternalError, PayloadTooLarge, RouterError
from router._http_types import Edge, HttpRequest, HttpResponse
from router._status import error_response

if TYPE_CHECKING:
    from router._app import ChatRouter

# DigitalOcean refuses requests over 1 MB before we see them; this guards the gateway too.
PLATFORM_BODY_LIMIT = 1_048_576


def read_event(event: Mapping[str, Any], max_body_bytes: int = PLATFORM_BODY_LIMIT
               ) -> HttpRequest:
    """Read a `web: raw` event (`event["http"]`) into an HttpRequest, decoding base64 bodies."""
    http = event.get("http")
    if not isinstance(http, Mapping):
        raise BadRequest("not a web request", code="bad_event")
    body = http.get("body") or ""
    if not isinstance(body, str):
        raise BadRequest("the request body must be text", code="bad_event")
    if len(body) > max(max_body_bytes * 4 // 3 + 4, max_body_bytes):
        raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
    if http.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("the body is flagged base64 but does not decode",
                             code="invalid_base64") from None
    else:
        data = body.encode("utf-8", "surrogatepass")
    if len(data) > max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
    return replace(read_head(event), body=data)


def read_head(event: Mapping[str, Any]) -> HttpRequest:
    """A web event's method, path, headers and query, without its body (what a refusal of
    a body the edge cannot read is logged and traced with)."""
    http = event.get("http")
    http = http if isinstance(http, Mapping) else {}
    raw_headers = http.get("headers") or {}
    headers = {str(k).lower(): str(v) for k, v in raw_headers.items()} \
        if isinstance(raw_headers, Mapping) else {}
    path = str(http.get("path") or "/")
    return HttpRequest(
        method=str(http.get("method") or "GET").upper(),
        path=path if path.startswith("/") else "/" + path,
        headers=headers,
        body=b"",
        query=str(http.get("queryString") or ""),
    )


def to_do_response(response: HttpResponse) -> dict[str, Any]:
    """The function's return value: `{statusCode, headers, body}`."""
    return {"statusCode": response.status, "headers": dict(response.headers),
            "body": response.body}


def remaining_ms(context: Any) -> int | None:
    """The platform's remaining time, if the context offers it."""
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if callable(getter):
        try:
            return int(getter())
        except (TypeError, ValueError):
            return None
    return None


@dataclass
class FunctionContext:
    """A DigitalOcean-like context: what the runtime passes as `main`'s second argument."""

    deadline: int
    activation_id: str = "local"
    function_name: str = "/local/chat/ask"
    namespace: str = "local"
    request_id: str = "local"
    api_host: str = field(default="http://127.0.0.1")

    @classmethod
    def with_timeout(cls, timeout_ms: int, **kwargs: str) -> FunctionContext:
        """A context whose deadline is `timeout_ms` from now, like an invocation's."""
        return cls(deadline=int(time.time() * 1000) + timeout_ms, **kwargs)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until the platform would cut the call."""
        return max(0, self.deadline - int(time.time() * 1000))


class WebFunction:
    """The `ask` function's per-container state: the router, built on the first call."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._state: PerContainer[ChatRouter] = PerContainer(_build_router, env)

    def router(self) -> ChatRouter:
        """The ChatRouter, created once from the environment (the edge reads it, nobody else)."""
        return self._state.get()

    def close(self) -> None:
        """Close the router's clients (tests and the service's shutdown; never needed on DO)."""
        self._state.close()

    def __call__(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        """Handle one invocation; always returns a response dict."""
        router = None
        try:
            router = self.router()
            request = read_event(event, router.settings.max_body_bytes)
        except RouterError as exc:
            if router is None:
                return _refuse_unrouted(exc, logging.WARNING, "request refused at the edge",
                                        {"code": exc.code})
            # Logged, traced (and its CORS headers set, so a browser can read why) by the
            # router, like any refusal.
            return to_do_response(router.refuse_now(read_head(event), exc))
        except Exception as exc:
            # Every setting is validated by Settings, so this is a bug in building the router:
            # still our JSON, never the platform's bare 502. Only the type is logged.
            return _refuse_unrouted(
                InternalError("the router failed to start; see its logs", code="internal_error"),
                logging.ERROR, "the router failed to start", {"exc_type": type(exc).__name__})
        return to_do_response(router.handle(request, Edge(time_limit_ms=remaining_ms(context))))


def _refuse_unrouted(error: RouterError, level: int, message: str,
                     fields: dict[str, str]) -> dict[str, Any]:
    # No router to log and trace it: still one id on the answer and on its line, as the
    # router gives every refusal, so a caller's report leads to the line.
    import uuid  # here: a path taken only when the router cannot be built

    request_id = uuid.uuid4().hex[:16]
    logging.getLogger("router.request").log(
        level, message, extra={"fields": {**fields, "request_id": request_id}})
    response = error_response(error)
    response.headers["x-request-id"] = request_id
    return to_do_response(response)


def _build_router(settings: Settings) -> ChatRouter:
    # Imported here: the router is built on the first call, not at the entry's import.
    from router._app import ChatRouter

    return ChatRouter(settings)

