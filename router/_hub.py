"""The Hub client of the `warmup` function: huggingface_hub's HfApi, bounded and translated.

Only the warmup function loads this module (on its first run, never at import); the `ask`
function wakes the Space through `_wake.SpaceHub`, plain httpx, and never imports
huggingface_hub. The tools (`router_tools.space_ops`) build Space deploys on top of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from router._wake import HubError, Runtime

if TYPE_CHECKING:
    from huggingface_hub import HfApi

T = TypeVar("T")


def _bounded_client_factory(timeout_s: float) -> Callable[[], Any]:
    from huggingface_hub.utils import _http

    def factory() -> Any:
        client = _http.default_client_factory()
        # huggingface_hub waits forever by default; a scheduled run must not.
        client.timeout = timeout_s
        return client

    return factory


class HubClient:
    """HfApi for one Space, with every Hub failure translated to HubError (no URL, no token)."""

    def __init__(self, endpoint: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        from huggingface_hub import HfApi, set_client_factory

        # Process-wide in huggingface_hub: called at the edge only (function entry, CLI).
        set_client_factory(_bounded_client_factory(timeout_s))
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
