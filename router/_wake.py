"""Waking the Space: the Hub's restart endpoint, rate-limited per container, never blocking.

`HubRest` speaks the two Hub endpoints the router needs with httpx, so that the `ask` function
never imports huggingface_hub. Its methods have the same names and meaning as
`huggingface_hub.HfApi`'s, so `wake_space` works with either client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from router._backends import shared_tls
from router._config import Settings

log = logging.getLogger("router.wake")

# Stages in which a restart is what the Space needs; compared as strings because
# huggingface_hub's SpaceStage enum lacks SLEEPING.
WAKE_STAGES = frozenset({"SLEEPING", "STOPPED", "PAUSED", "RUNTIME_ERROR"})
READY_STAGES = frozenset({"RUNNING"})
STARTING_STAGES = frozenset({"BUILDING", "RUNNING_BUILDING", "APP_STARTING",
                             "RUNNING_APP_STARTING"})


class HubError(Exception):
    """The Hub refused or failed a call; `status` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SpaceHub(Protocol):
    """What waking needs from a Hub client (HfApi satisfies it too)."""

    def restart_space(self, repo_id: str) -> Any:
        """Ask the Hub to (re)start the Space."""

    def get_space_runtime(self, repo_id: str) -> Any:
        """Read the Space's runtime, whose `stage` says whether it is running."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """The part of the Hub's runtime answer the router reads."""

    stage: str
    hardware: str | None
    raw: dict[str, Any]


class HubRest:
    """A minimal Hub client over httpx: runtime and restart, nothing else."""

    def __init__(self, endpoint: str, token: str, *, timeout_s: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(
            base_url=endpoint, headers={"authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport or httpx.HTTPTransport(retries=0, verify=shared_tls()),
            trust_env=False,
        )

    def _call(self, method: str, path: str) -> dict[str, Any]:
        try:
            response = self._client.request(method, path)
        except httpx.HTTPError as exc:
            raise HubError(f"hub unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise HubError(f"hub answered HTTP {response.status_code}", response.status_code)
        try:
            data = response.json()
        except ValueError:
            raise HubError("hub answered non-JSON") from None
        return data if isinstance(data, dict) else {}

    def close(self) -> None:
        """Close the pooled connection."""
        self._client.close()

    def get_space_runtime(self, repo_id: str) -> Runtime:
        """GET /api/spaces/{id}/runtime."""
        data = self._call("GET", f"/api/spaces/{quote(repo_id, safe='/')}/runtime")
        hardware = data.get("hardware")
        current = hardware.get("current") if isinstance(hardware, dict) else None
        return Runtime(str(data.get("stage", "")), current, data)

    def restart_space(self, repo_id: str) -> Runtime:
        """POST /api/spaces/{id}/restart: works from any stage with a write token."""
        data = self._call("POST", f"/api/spaces/{quote(repo_id, safe='/')}/restart")
        return Runtime(str(data.get("stage", "")), None, data)


def stage_of(runtime: Any) -> str:
    """The stage string of a runtime from either client."""
    return str(getattr(runtime, "stage", "") or "")


def wake_space(hub: SpaceHub, repo_id: str) -> tuple[str, bool]:
    """Restart the Space if its stage says it needs it; return (stage seen, restarted?).

    A running or starting Space is left alone: restarting it would only start it over.
    """
    stage = stage_of(hub.get_space_runtime(repo_id))
    if stage not in WAKE_STAGES:
        return stage, False
    return stage_of(hub.restart_space(repo_id)) or stage, True


class WakeGate:
    """At most one wake per cool-down, per container; the wake runs on its own thread."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None

    def claim(self) -> bool:
        """Take the wake slot if the cool-down has passed."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.cooldown_s:
                return False
            self._last = now
            return True


class SpaceWaker:
    """The router's non-blocking wake path, used when a Space answer says it is not ready."""

    def __init__(self, settings: Settings, hub: SpaceHub | None = None) -> None:
        self.repo_id = settings.space_id
        self.enabled = settings.can_wake
        self.gate = WakeGate(settings.wake_cooldown_s)
        self._endpoint = settings.hf_endpoint
        self._token = settings.hf_token
        # Made on the first wake, not at cold start: most containers never need it.
        self.hub: SpaceHub | None = hub
        self._thread: threading.Thread | None = None
        # The observer's hook (router/_telemetry.py): reason, stage seen, restarted?
        self.on_checked: Callable[[str, str, bool], None] | None = None

    def request(self, reason: str) -> threading.Thread | None:
        """Start a wake in the background if allowed; return its thread, or None."""
        if not self.enabled or not self.gate.claim():
            return None
        if self.hub is None:
            self.hub = HubRest(self._endpoint, self._token)
        thread = threading.Thread(target=self._wake, args=(reason,), name="space-wake",
                                  daemon=True)
        thread.start()
        self._thread = thread
        return thread

    def settle(self, timeout_s: float) -> float:
        """Wait up to `timeout_s` for a wake still in flight; return the seconds waited.

        Only the function's edge calls this, just before it returns: the platform freezes the
        container then, and the wake's call should have left by that time. The service never
        waits: its process lives on.
        """
        thread = self._thread
        if thread is None or not thread.is_alive() or timeout_s <= 0:
            return 0.0
        started = time.monotonic()
        thread.join(timeout_s)
        return time.monotonic() - started

    def close(self) -> None:
        """Close our own Hub client (one handed in belongs to the caller)."""
        if isinstance(self.hub, HubRest):
            self.hub.close()

    def _wake(self, reason: str) -> None:
        assert self.hub is not None
        try:
            stage, restarted = wake_space(self.hub, self.repo_id)
        except HubError as exc:
            log.warning("space wake failed", extra={"fields": {"reason": reason,
                                                                "hub_status": exc.status}})
            stage, restarted = "error", False
        else:
            log.info("space wake checked", extra={"fields": {"reason": reason, "stage": stage,
                                                             "restarted": restarted}})
        if self.on_checked is not None:
            self.on_checked(reason, stage, restarted)
