"""The router service (router_service) in front of a test's `main`: one shared router."""

from __future__ import annotations

from typing import Any

from router_service import Service


def serve_main(main: Any, **kwargs: Any) -> Service:
    """Start the service on the entry's own per-container router (its settings, clients,
    breakers), as `python -m router_service` would build it from the same settings."""
    return Service(main.__globals__["FUNCTION"].router(), **kwargs).start()
