"""The service on its socket: the ASGI app, uvicorn, and the door in front of them."""

from __future__ import annotations

from router import ChatRouter
from router_service._app import RouterService
from router_service._door import Door, guarded_protocol
from router_service._host import UvicornHost
from router_service._limits import ServiceLimits

# SIGTERM lets streams in flight finish for this long.
GRACE_S = 30


class Service(UvicornHost):
    """The service on a socket bound up front: `serve_forever` (the CLI) or `start` (tests).

    uvicorn brings uvloop, httptools, graceful SIGTERM and the total connection cap (past it a
    request gets 503); the door adds the header and body timers and the per-address share
    (`limits`, from the environment: see README, "The service's door"). It needs httptools
    (requirements/gateway.txt): the door is a subclass of uvicorn's httptools protocol."""

    thread_name = "router-service"

    def __init__(self, router: ChatRouter, *, namespace: str = "local",
                 timeout_ms: int = 28_000, host: str = "127.0.0.1", port: int = 8080,
                 limits: ServiceLimits | None = None) -> None:
        self.limits = limits or ServiceLimits()
        self.app = RouterService(router, namespace=namespace, timeout_ms=timeout_ms,
                                 metrics=self.limits.metrics)
        self.host = host
        self.door = Door(self.limits)
        self._host(self.app, host=host, port=port, http=guarded_protocol(self.door),
                   ws="none", timeout_keep_alive=self.limits.keep_alive_s,
                   limit_concurrency=self.limits.max_connections,
                   timeout_graceful_shutdown=GRACE_S, backlog=2048,
                   # uvicorn would otherwise take X-Forwarded-For from any peer on 127.0.0.1
                   # (or FORWARDED_ALLOW_IPS); the router's TRUSTED_PROXIES alone decides.
                   proxy_headers=False)

    @property
    def function_url(self) -> str:
        """The function URL, in DigitalOcean's shape."""
        return f"http://{self.host}:{self.port}{self.app.prefix}"
