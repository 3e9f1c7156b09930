"""Bearer-token check for every route but /health, as ASGI middleware."""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from ai_space.errors import Unauthorized, error_response

log = logging.getLogger("ai_space")

# Routes that answer without a token: the platform health checks cannot send one.
PUBLIC_PATHS = frozenset({"/health"})


def token_matches(header: bytes | None, token: bytes) -> bool:
    """Whether an Authorization header carries the token; constant time in the token."""
    if header is None:
        # Still run a comparison, so a missing header costs what a wrong one does.
        hmac.compare_digest(token, b"")
        return False
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


class BearerAuth:
    """Reject requests without `Authorization: Bearer <API_TOKEN>` with a 401.

    It runs before routing and body parsing, so an unauthenticated caller learns nothing
    about the body it sent (no 400 or 413 before the 401).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the token on HTTP requests, then hand over to the app."""
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        if not token_matches(header, self.token):
            log.info("401 %s %s", scope["method"], scope["path"])
            reason = "missing bearer token" if header is None else "invalid bearer token"
            await error_response(Unauthorized(reason))(scope, receive, send)
            return
        await self.app(scope, receive, send)
