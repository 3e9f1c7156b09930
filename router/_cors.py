"""CORS, answered by the function itself (`web-custom-options: true`), for listed origins only."""

from __future__ import annotations

from router._config import Settings
from router._errors import Forbidden
from router._http_types import HttpResponse

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "authorization, content-type, x-api-key, x-chat-deadline-ms"
EXPOSED_HEADERS = ("x-chat-backend, x-chat-fallback, x-chat-route, x-chat-route-reason, "
                   "x-chat-attempts, x-request-id, retry-after")


class Cors:
    """The CORS allowlist from CORS_ORIGINS (`*` allows any origin)."""

    def __init__(self, settings: Settings) -> None:
        self.origins = frozenset(o.rstrip("/") for o in settings.cors_origins)
        self.any = "*" in self.origins

    def allowed(self, origin: str) -> bool:
        """Whether a browser at `origin` may call us."""
        return self.any or origin.rstrip("/") in self.origins

    def check(self, origin: str) -> None:
        """Refuse a browser request from an origin that is not listed (no Origin: not a browser)."""
        if origin and not self.allowed(origin):
            raise Forbidden("this origin is not allowed to call the chat API")

    def headers_for(self, origin: str) -> dict[str, str]:
        """The CORS headers for an actual (non-preflight) answer."""
        if not origin or not self.allowed(origin):
            return {}
        return {"access-control-allow-origin": origin, "vary": "Origin",
                "access-control-expose-headers": EXPOSED_HEADERS}

    def preflight(self, origin: str, method: str) -> HttpResponse:
        """Answer an OPTIONS preflight: 204 with the grants, or 403 for an unlisted origin."""
        self.check(origin or "null")
        if method and method.upper() not in ALLOWED_METHODS:
            raise Forbidden(f"method {method[:16]} is not allowed", code="method_not_allowed")
        return HttpResponse(204, "", {
            "access-control-allow-methods": ALLOWED_METHODS,
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": "600",
        })
