"""The Hub client of the `warmup` function: huggingface_hub's HfApi, bounded and translated.

Only the warmup function loads this module (on its first run, never at import); the `ask`
function wakes a Space or an endpoint over plain httpx (router/_wake.py, _endpoint_api.py) and
never imports huggingface_hub. The tools (`router_tools.space_ops`) build Space deploys on top
of it.

huggingface_hub hard-codes the Inference Endpoints API (`constants.INFERENCE_ENDPOINTS_ENDPOINT`,
no environment override); with another HF_ENDPOINTS_API (a test's fake, a proxy), the client
this module gives huggingface_hub sends those calls there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from router._endpoint_api import EndpointInfo, info_of
from router._wake import HubError, Runtime

if TYPE_CHECKING:
    from huggingface_hub import HfApi

T = TypeVar("T")


def _bounded_client_factory(timeout_s: float, endpoints_api: str) -> Callable[[], Any]:
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    default_api = constants.INFERENCE_ENDPOINTS_ENDPOINT

    class ToEndpointsApi(httpx2.HTTPTransport):
        """Sends what huggingface_hub addresses to its own endpoints API to `endpoints_api`."""

        def handle_request(self, request: Any) -> Any:
            url = str(request.url)
            if url.startswith(default_api):
                request.url = httpx2.URL(endpoints_api + url[len(default_api):])
            return super().handle_request(request)

    redirect = endpoints_api != default_api

    def factory() -> Any:
        # huggingface_hub's own client (its request hook, redirects followed), except that it
        # waits forever by default and a scheduled run must not.
        return httpx2.Client(event_hooks={"request": [_http.hf_request_event_hook]},
                             follow_redirects=True, timeout=timeout_s,
                             transport=ToEndpointsApi() if redirect else None)

    return factory


class HubClient:
    """HfApi for one token: its Spaces and its Inference Endpoints, with every Hub failure
    translated to HubError (no URL, no token)."""

    def __init__(self, endpoint: str, token: str | None, *, timeout_s: float = 10.0,
                 endpoints_api: str = "https://api.endpoints.huggingface.cloud/v2") -> None:
        from huggingface_hub import HfApi, set_client_factory

        # Process-wide in huggingface_hub: called at the edge only (function entry, CLI).
        set_client_factory(_bounded_client_factory(timeout_s, endpoints_api.rstrip("/")))
        self.api: HfApi = HfApi(endpoint=endpoint, token=token or None,
                                library_name="chat-router")

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return fn(*args, **kwargs)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise HubError(f"hub answered HTTP {status}", status) from None
        except httpx2.HTTPError as exc:
            raise HubError(f"hub unreachable: {type(exc).__name__}") from None

    def get_space_runtime(self, repo_id: str) -> Runtime:
        """The Space's stage, hardware and raw runtime (`gcTimeout` is its sleep time)."""
        runtime = self._call(self.api.get_space_runtime, repo_id)
        return Runtime(str(runtime.stage), runtime.hardware, dict(runtime.raw))

    def restart_space(self, repo_id: str) -> Runtime:
        """Restart the Space (wakes it from any stage; billed from now on)."""
        runtime = self._call(self.api.restart_space, repo_id)
        return Runtime(str(runtime.stage), runtime.hardware, dict(runtime.raw))

    def pause_space(self, repo_id: str) -> str:
        """Pause the Space: not billed until restarted."""
        return str(self._call(self.api.pause_space, repo_id).stage)

    def set_space_sleep_time(self, repo_id: str, seconds: int) -> None:
        """Sleep after `seconds` of inactivity (-1: never)."""
        self._call(self.api.set_space_sleep_time, repo_id, seconds)

    def get_inference_endpoint(self, name: str, *, namespace: str | None = None
                               ) -> EndpointInfo:
        """The endpoint's status and scaling."""
        endpoint = self._call(self.api.get_inference_endpoint, name, namespace=namespace)
        return info_of(dict(endpoint.raw))

    def resume_inference_endpoint(self, name: str, *, namespace: str | None = None
                                  ) -> EndpointInfo:
        """Resume the endpoint (one already running counts as resumed: `running_ok`)."""
        endpoint = self._call(self.api.resume_inference_endpoint, name, namespace=namespace,
                              running_ok=True)
        return info_of(dict(endpoint.raw))

    def update_inference_endpoint(self, name: str, *, namespace: str | None = None,
                                  min_replica: int) -> EndpointInfo:
        """Set the endpoint's minimum replicas (1: kept warm; 0: it may scale to zero)."""
        endpoint = self._call(self.api.update_inference_endpoint, name, namespace=namespace,
                              min_replica=min_replica)
        return info_of(dict(endpoint.raw))
