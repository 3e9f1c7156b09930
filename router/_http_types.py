"""The router's own request and response types, independent of any platform."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router._streaming import StreamFacts

# The request headers of our own protocol, shared by the router and the warmup function.
DEADLINE_HEADER = "x-chat-deadline-ms"
WARMUP_HEADER = "x-chat-warmup"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A read-only view of one HTTP request; header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""
    query: str = ""
    # Who is calling, as router/_access.py named it (`user:`, `key:` or `ip:`); set after the
    # access check, empty before it.
    subject: str = ""
    # The address of the connection's other end, where the server knows it (the service);
    # empty in the function, where DigitalOcean's edge writes X-Forwarded-For instead.
    peer: str = ""

    def header(self, name: str, default: str = "") -> str:
        """A header's value, by case-insensitive name."""
        return self.headers.get(name.lower(), default)


@dataclass(slots=True)
class HttpResponse:
    """A response on its way out; the edge turns it into the platform's shape."""

    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    # The service's true streams only: SSE text, chunk by chunk (the function never sets it).
    stream: AsyncIterator[str] | None = None
    # For the observer (router/_telemetry.py), never sent: the backend's token counts, and a
    # true stream's facts (filled in as it runs).
    usage: dict[str, Any] | None = None
    facts: StreamFacts | None = None

    @classmethod
    def json(cls, status: int, data: Any, headers: Mapping[str, str] | None = None
             ) -> HttpResponse:
        """A JSON response."""
        return cls(status, json.dumps(data, separators=(",", ":")),
                   {"content-type": "application/json", **(headers or {})})
