"""The service on its socket: the ASGI app, uvicorn, and the door in front of them."""

from __future__ import annotations

from collections.abc import Mapping

from router import ChatRouter, HttpRequest, RouterError
from router_service._app import RouterService
from router_service._door import guarded_protocol
from router_service._fair import CredentialCheck, Door
from router_service._host import UvicornHost
from router_service._limits import ServiceLimits

# SIGTERM lets streams in flight finish for this long.
GRACE_S = 30


class Service(UvicornHost):
    """The service on a socket bound up front: `serve_forever` (the CLI) or `start` (tests).

    uvicorn brings uvloop, httptools and graceful SIGTERM; the door adds the time limit on
    every phase of a request, the header limits, the pipelining gate and the fair share of
    the connection cap (`limits`, from the environment: see README, "The service's door"). It
    needs httptools (requirements/gateway.txt): the door is a subclass of uvicorn's httptools
    protocol."""

    thread_name = "router-service"

    def __init__(self, router: ChatRouter, *, namespace: str = "local",
                 timeout_ms: int = 28_000, host: str = "127.0.0.1", port: int = 8080,
                 limits: ServiceLimits | None = None) -> None:
        self.limits = limits or ServiceLimits()
        self.app = RouterService(router, namespace=namespace, timeout_ms=timeout_ms,
                                 metrics=self.limits.metrics)
        self.host = host
        self.door = Door(self.limits, credential_check(router))
        self._host(self.app, host=host, port=port, http=guarded_protocol(self.door),
                   ws="none", timeout_keep_alive=self.limits.keep_alive_s,
                   # The door holds the cap (uvicorn's own would refuse the newcomer that the
                   # door just made room for).
                   limit_concurrency=None,
                   timeout_graceful_shutdown=GRACE_S, backlog=2048,
                   # uvicorn would otherwise take X-Forwarded-For from any peer on 127.0.0.1
                   # (or FORWARDED_ALLOW_IPS); the router's TRUSTED_PROXIES alone decides.
                   proxy_headers=False)

    @property
    def function_url(self) -> str:
        """The function URL, in DigitalOcean's shape."""
        return f"http://{self.host}:{self.port}{self.app.prefix}"


def credential_check(router: ChatRouter) -> CredentialCheck:
    """The door's check of a request's credential (API_KEYS or a client token), by the
    router's own rules; None when no credential is configured (open access)."""

    def check(headers: Mapping[str, str]) -> bool | None:
        access = router.access
        if access.mode == "open":
            return None
        try:
            access.subject(HttpRequest("GET", "/", headers))
        except RouterError:
            return False
        return True

    return check
