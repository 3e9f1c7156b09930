"""The router as a service (`python -m router_service`, `python -m router_tools serve`).

It ships (router/Dockerfile) on App Platform: the runtime `router` below it, the tools
(`router_tools`) above it. Its door times out every phase of a request, checks the credential
before it reads a body, caps the body and shares the connection cap fairly.
"""

from router_service._app import RouterService
from router_service._cli import (
    add_serve_arguments,
    function_limits,
    load_environment,
    read_env_file,
    serve,
)
from router_service._fair import Door
from router_service._host import UvicornHost
from router_service._limits import ServiceLimits
from router_service._metrics import RouterMetrics
from router_service._service import Service

__all__ = ["Door", "RouterMetrics", "RouterService", "Service", "ServiceLimits", "UvicornHost",
           "add_serve_arguments", "function_limits", "load_environment", "read_env_file",
           "serve"]
