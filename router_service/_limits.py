"""The service's door settings: how long each phase of a request may take, and who may hold
how many connections. Read once from the environment at start-up, like the router's Settings.

The function never sees these: DigitalOcean's edge holds its door. They matter only where
`python -m router_service` (or `python -m router_tools serve`) faces clients itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router import ConfigError, is_unset


class ServiceLimits(BaseModel):
    """Time limits on every phase of a request, and the connection caps."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # A client must finish its request line and headers this long after connecting (or after
    # the first byte of its next request on a kept-alive connection).
    header_timeout_ms: int = Field(default=5_000, ge=50, le=120_000)
    # A body must arrive at this rate or better, after a grace of `header_timeout_ms`: a body
    # of n bytes may take header_timeout_ms + n / rate seconds in all.
    body_min_bytes_per_s: int = Field(default=4_096, ge=1, le=100_000_000)
    # An idle kept-alive connection (a response sent, no new request) closes after this.
    keep_alive_timeout_ms: int = Field(default=5_000, ge=50, le=600_000)
    # Output queued for a client that makes no progress for this long (the socket's buffers
    # full, and not draining) closes the connection: a reader that stopped reading.
    write_timeout_ms: int = Field(default=10_000, ge=50, le=600_000)
    # A request's line and headers, in bytes and in fields; past either, 431 and the
    # connection closes, before the rest is read.
    max_header_bytes: int = Field(default=32_768, ge=1_024, le=1_048_576)
    max_header_count: int = Field(default=100, ge=8, le=10_000)
    # Open connections in all (router_service/_fair.py): at the cap, the connection that has
    # stalled longest in the heaviest address group makes room; when none has stalled, 503.
    max_connections: int = Field(default=2_000, ge=1, le=1_000_000)
    # The most one address group (/24 for IPv4, /64 for IPv6) may hold; its share is also at
    # most max_connections / the groups holding connections, so it shrinks as more groups
    # are active. The default leaves room for an office behind one NAT address
    # (bench/streaming.py holds 500 from one). Past its share a group's next connection gets
    # 503 and is closed before a byte is read.
    max_connections_per_address: int = Field(default=1_000, ge=1, le=1_000_000)
    # Connections kept for requests that carry a valid credential: the others (and those that
    # have sent nothing yet) hold at most max_connections - reserved. Default a tenth of the cap.
    reserved_connections: int | None = Field(default=None, ge=0, le=1_000_000)
    # Serve Prometheus' /metrics (router_service/_metrics.py); off, the router counts nothing.
    metrics: bool = True

    @model_validator(mode="after")
    def _share_within_cap(self) -> ServiceLimits:
        if self.max_connections_per_address > self.max_connections:
            raise ValueError("max_connections_per_address: more than max_connections")
        if self.reserved >= self.max_connections:
            raise ValueError("reserved_connections: not below max_connections")
        return self

    @property
    def reserved(self) -> int:
        """Connections kept for requests with a valid credential."""
        if self.reserved_connections is None:
            return self.max_connections // 10
        return self.reserved_connections

    @property
    def header_timeout_s(self) -> float:
        """`header_timeout_ms` in seconds."""
        return self.header_timeout_ms / 1000.0

    @property
    def keep_alive_s(self) -> float:
        """`keep_alive_timeout_ms` in seconds."""
        return self.keep_alive_timeout_ms / 1000.0

    @property
    def write_timeout_s(self) -> float:
        """`write_timeout_ms` in seconds."""
        return self.write_timeout_ms / 1000.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServiceLimits:
        """Build the limits from an environment; empty and `none` values count as unset."""
        raw = {name: env[name.upper()] for name in cls.model_fields
               if not is_unset(env.get(name.upper(), ""))}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            names = sorted({str(err["loc"][0]).upper() for err in exc.errors() if err["loc"]}
                           or {"MAX_CONNECTIONS_PER_ADDRESS or RESERVED_CONNECTIONS"})
            raise ConfigError(f"invalid service settings: {', '.join(names)}") from None
