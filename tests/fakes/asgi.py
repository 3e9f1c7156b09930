"""What every ASGI fake does on the way in: read the whole body, lower-case the headers."""

from __future__ import annotations

from typing import Any


async def read_request(scope: dict[str, Any], receive: Any) -> tuple[bytes, dict[str, str]]:
    """The request's full body and its headers (names lower-case)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return body, {k.decode().lower(): v.decode() for k, v in scope["headers"]}
