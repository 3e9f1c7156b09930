"""The router service (router_service) in front of a test's `main`: one shared function."""

from __future__ import annotations

from typing import Any

from router_service import Service


def serve_main(main: Any, **kwargs: Any) -> Service:
    """Start the service on the entry's own per-container `FUNCTION` (its settings, clients)."""
    return Service(main.__globals__["FUNCTION"], **kwargs).start()
