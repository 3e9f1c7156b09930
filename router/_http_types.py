"""The router's own request and response types, independent of any platform; what the edge
that serves a request can do (`Edge`); and one request on its way through (`Exchange`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router._deadline import Deadline
    from router._record import RequestRecord

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

    @classmethod
    def json(cls, status: int, data: Any, headers: Mapping[str, str] | None = None
             ) -> HttpResponse:
        """A JSON response."""
        return cls(status, json.dumps(data, separators=(",", ":")),
                   {"content-type": "application/json", **(headers or {})})


@dataclass(frozen=True, slots=True)
class Edge:
    """What the edge that serves a request can do: the time it gives the whole answer (a
    function's remaining time, the service's `limits.timeout`; None: no limit of its own),
    and whether it sends a stream as it comes (the service) or returns one body (a function,
    whose `stream: true` is answered with the whole stream at once)."""

    time_limit_ms: int | None = None
    live_streams: bool = False


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request on its way through the router: who sent it (as the access layer named
    them, for the quotas), its deadline, the edge's abilities, and the record of what
    happened to it."""

    request: HttpRequest
    subject: str
    deadline: Deadline
    edge: Edge
    record: RequestRecord
