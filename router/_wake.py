"""Waking a sleeping deployment: a Space (the Hub's restart) or an Inference Endpoint (resume),
rate-limited per deployment and per container, never blocking the answer.

`HubRest` speaks the two Space endpoints the router needs with httpx, and
`router/_endpoint_api.py` the endpoint's two, so that the `ask` function never imports
huggingface_hub. Their methods have the names and meaning of `huggingface_hub.HfApi`'s, so
`wake_space` and `wake_endpoint` work with either client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from router._config import Settings
from router._deployments import Deployment
from router._hub_rest import HubError as HubError  # re-exported: the name callers use
from router._hub_rest import RestClient

log = logging.getLogger("router.wake")

# Stages in which a restart is what the Space needs; compared as strings because
# huggingface_hub's SpaceStage enum lacks SLEEPING.
WAKE_STAGES = frozenset({"SLEEPING", "STOPPED", "PAUSED", "RUNTIME_ERROR"})
READY_STAGES = frozenset({"RUNNING"})
STARTING_STAGES = frozenset({"BUILDING", "RUNNING_BUILDING", "APP_STARTING",
                             "RUNNING_APP_STARTING"})
BROKEN_STAGES = frozenset({"RUNTIME_ERROR", "BUILD_ERROR", "CONFIG_ERROR", "NO_APP_FILE"})
# The longest a restart is watched: a Space that has not run after this is broken, not waking.
WATCH_LIMIT_S = 1_800.0


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


class HubRest(RestClient):
    """A minimal Hub client over httpx: a Space's runtime and restart, nothing else."""

    def get_space_runtime(self, repo_id: str) -> Runtime:
        """GET /api/spaces/{id}/runtime."""
        data = self.call("GET", f"/api/spaces/{quote(repo_id, safe='/')}/runtime")
        hardware = data.get("hardware")
        current = hardware.get("current") if isinstance(hardware, dict) else None
        return Runtime(str(data.get("stage", "")), current, data)

    def restart_space(self, repo_id: str) -> Runtime:
        """POST /api/spaces/{id}/restart: works from any stage with a write token."""
        data = self.call("POST", f"/api/spaces/{quote(repo_id, safe='/')}/restart")
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


Wake = Callable[[], tuple[str, bool]]


class Waker:
    """One deployment's non-blocking wake path (a Space's restart, an endpoint's resume): at
    most one per cool-down per container, on its own thread, its Hub client made on the first
    wake (most containers never need one). `state` is what the last check saw, for /health."""

    def __init__(self, deployment: Deployment, settings: Settings,
                 hub: SpaceHub | None = None) -> None:
        self.name = deployment.name
        self.kind = deployment.kind
        self.hub_id = deployment.hub_id
        self.enabled = deployment.can_wake
        self.gate = WakeGate(settings.wake_cooldown_s)
        self._token = deployment.hub_token
        self._base = settings.hf_endpoint if deployment.kind == "space" \
            else settings.hf_endpoints_api
        # Handed in (tests: a Space's HfApi) or made on the first wake: closed by us only then.
        self.hub: Any = hub
        self._own: RestClient | None = None
        self._thread: threading.Thread | None = None
        self.state = "unchecked"  # the stage or status the last wake saw (`error`: Hub failed)
        self.checked_at: float | None = None
        self.restarted = False
        # The observer's hook (router/_telemetry.py): deployment, reason, stage seen, woken?
        self.on_checked: Callable[[str, str, str, bool], None] | None = None
        # Set by an observer that times wakes (the service's metrics): after a restart, the
        # wake's thread asks the Hub every `wake_poll_ms` until the deployment runs, then
        # reports (deployment, seconds from the wake request). Never set in the function,
        # whose container is frozen between requests.
        self.on_ready: Callable[[str, float], None] | None = None
        self.poll_s = settings.wake_poll_ms / 1000.0
        self._closed = threading.Event()
        self._watching = threading.Lock()

    def request(self, reason: str, ids: Mapping[str, str] | None = None
                ) -> threading.Thread | None:
        """Start a wake in the background if allowed; return its thread, or None. `ids` (the
        asking request's id and trace id) go on the wake's log lines."""
        if not self.enabled or not self.gate.claim():
            return None
        if self.hub is None and self.kind == "space":
            self._own = self.hub = HubRest(self._base, self._token)
        elif self.hub is None:
            # Loaded on an endpoint's first wake: most containers never wake one, and the
            # `ask` function's cold start should not pay for it.
            from router._endpoint_api import EndpointRest

            self._own = self.hub = EndpointRest(self._base, self._token)
        thread = threading.Thread(target=self._wake, args=(reason, dict(ids or {})),
                                  name=f"wake-{self.name}", daemon=True)
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

    def health(self) -> dict[str, Any]:
        """What /health shows of it: whether it can be woken, and what the last check saw."""
        if not self.enabled:
            return {"configured": False}
        ago = None if self.checked_at is None else round(time.monotonic() - self.checked_at, 1)
        return {"configured": True, "state": self.state, "woken": self.restarted,
                "checked_s_ago": ago}

    def close(self) -> None:
        """Stop a wake's watch; close our own Hub client (one handed in is the caller's)."""
        self._closed.set()
        if self._own is not None:
            self._own.close()

    def _wake(self, reason: str, ids: dict[str, str]) -> None:
        from router._endpoint_api import wake_endpoint  # loaded already by `request`

        started = time.monotonic()  # the wake request: what `router_space_wake_seconds` times
        wake: Wake = (lambda: wake_space(self.hub, self.hub_id)) if self.kind == "space" \
            else (lambda: wake_endpoint(self.hub, self.hub_id))
        fields: dict[str, Any] = {**ids, "backend": self.name, "reason": reason}
        try:
            stage, restarted = wake()
        except HubError as exc:
            log.warning("wake failed", extra={"fields": {**fields, "hub_status": exc.status}})
            stage, restarted = "error", False
        else:
            log.info("wake checked", extra={"fields": {**fields, "stage": stage,
                                                       "restarted": restarted}})
        self.state, self.restarted, self.checked_at = stage, restarted, time.monotonic()
        if self.on_checked is not None:
            self.on_checked(self.name, reason, stage, restarted)
        on_ready = self.on_ready
        # One watch at a time: a watch lasts until the deployment runs (or WATCH_LIMIT_S), so
        # one per wake would pile up threads on a deployment that keeps falling asleep; the
        # running watch already times the wake from its first request.
        if restarted and on_ready is not None and self._watching.acquire(blocking=False):
            try:
                ready = self._watch(started)
            finally:
                self._watching.release()
            if ready is not None:
                on_ready(self.name, ready)

    def _watch(self, started: float) -> float | None:
        """Ask the Hub every `poll_s` until the deployment runs; the seconds from `started`
        to the answer that said so (None: it broke, the watch ran out, or we closed)."""
        from router._endpoint_api import BROKEN_STATUSES, READY_STATUSES, split_id, status_of

        if self.kind == "space":
            ready, broken = READY_STAGES, BROKEN_STAGES

            def read() -> str:
                return stage_of(self.hub.get_space_runtime(self.hub_id))
        else:
            ready, broken = READY_STATUSES, BROKEN_STATUSES
            namespace, name = split_id(self.hub_id)

            def read() -> str:
                return status_of(self.hub.get_inference_endpoint(name, namespace=namespace))

        while not self._closed.wait(self.poll_s):
            if time.monotonic() - started > WATCH_LIMIT_S:
                return None
            try:
                stage = read()
            except HubError:
                continue  # the Hub failing once says nothing about the deployment
            self.state, self.checked_at = stage, time.monotonic()
            if stage in ready:
                return self.checked_at - started
            if stage in broken:
                return None
        return None


def wakers(settings: Settings, hub: SpaceHub | None = None) -> dict[str, Waker]:
    """A Waker for each deployment that sleeps (`hub`, when given, serves the Spaces)."""
    return {d.name: Waker(d, settings, hub if d.kind == "space" else None)
            for d in settings.deployments if d.sleeps}
