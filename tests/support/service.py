"""The router service (router_service) in front of a test's `main`: one shared router."""

from __future__ import annotations

import threading
from typing import Any

from router_service import Service


def serve_main(main: Any, **kwargs: Any) -> Service:
    """Start the service on the entry's own per-container router (its settings, clients,
    breakers), as `python -m router_service` would build it from the same settings."""
    return Service(main.__globals__["FUNCTION"].router(), **kwargs).start()


def wake_threads() -> list[str]:
    """The wakes' threads alive: a wake, then its watch of the restarted Space."""
    return [t.name for t in threading.enumerate() if t.name.startswith("wake-")]
