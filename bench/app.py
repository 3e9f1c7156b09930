"""The app every server under comparison serves (bench/servers.py, bench/hostile.py): the
router service's ASGI app, with the settings of the environment the bench gives the server's
process. A module of its own, which both benches import (neither imports the other for it)."""

from __future__ import annotations

import os

from router import ChatRouter, Settings, configure_logging
from router_service import RouterService

settings = Settings.from_env(os.environ)
configure_logging(settings)
app = RouterService(ChatRouter(settings), namespace="bench", timeout_ms=28_000)
