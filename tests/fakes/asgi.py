"""What every ASGI fake does on the way in: read the whole body, lower-case the headers."""

from __future__ import annotations

import json
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


async def serve_lifespan(receive: Any, send: Any) -> None:
    """Answer a lifespan scope's startup and shutdown (a fake holds nothing to set up)."""
    while True:
        message = await receive()
        kind = message["type"].replace("lifespan.", "")
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


async def send_json(send: Any, status: int, data: Any) -> None:
    """Answer `data` as JSON with `status`, as an API does."""
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
