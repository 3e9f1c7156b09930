"""The `warmup` function: ping the deployments, read the Hub, keep the LLM tier warm in the
window.

Each scheduled run (DigitalOcean trigger, `web: false`):
1. pings every deployment's `/health` with short timeouts (a Space's or an endpoint's only
   inside the window: a request is activity, and would keep it awake and billed off-hours);
2. reads each Space's runtime stage and each Inference Endpoint's status from the Hub
   (huggingface_hub: `SPACE_ID` and `HF_TOKEN`, or a deployment's `id` and `hub_token`);
3. inside the keep-warm window (`WARM_SCHEDULE`), restarts a Space that is asleep, stopped or
   paused, through the router's own `wake_space`, and sets an endpoint's minimum replicas to 1
   (resuming it if paused, router/_endpoint_warm.py); outside it, leaves each Space to sleep
   (setting `SPACE_SLEEP_TIME_S` when given) and sets each endpoint's minimum replicas to 0;
4. calls `ask` with the warm-up marker when `ASK_URL` is set, so its container stays warm;
5. returns a JSON report of stages, latencies and actions. No token or URL ever appears in it:
   deployments appear by their configured names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import httpx

from router._config import Settings
from router._container import PerContainer
from router._deployments import Deployment
from router._endpoint_warm import EndpointKeeper, keep_warm
from router._errors import ConfigError
from router._http_types import WARMUP_HEADER
from router._schedule import Schedule, utc_now
from router._status import status_for
from router._wake import READY_STAGES, STARTING_STAGES, WAKE_STAGES, HubError, SpaceHub, wake_space

log = logging.getLogger("router.warmup")

HUB_TIMEOUT_S = 10.0


class WarmupHub(SpaceHub, EndpointKeeper, Protocol):
    """What a run needs from the Hub: SpaceHub, setting the sleep time, and an endpoint's
    status, resume and minimum replicas."""

    def set_space_sleep_time(self, repo_id: str, seconds: int) -> Any:
        """Sleep after `seconds` of inactivity (-1: never)."""


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 1)


def classify(response: httpx.Response) -> str:
    """What a `/health` answer says: ok, sleeping, starting, unauthorized, or error."""
    ctype = response.headers.get("content-type", "").lower()
    looks_html = "html" in ctype or response.content.lstrip()[:1] == b"<"
    if looks_html:
        # Hugging Face's edge: 200 + HTML for a sleeping Space, HTML while it starts.
        return "sleeping" if b"sleeping" in response.content.lower() else "starting"
    if response.status_code in (502, 503, 504):
        return "starting"
    if response.status_code in (401, 403):
        return "unauthorized"
    if response.status_code == 200 and "json" in ctype:
        return "ok"
    return "error"


def hub_reason(exc: HubError) -> str:
    """A short, safe name for a Hub failure."""
    if exc.status is None:
        return "unreachable"
    return {401: "unauthorized", 403: "forbidden", 404: "not_found",
            429: "rate_limited"}.get(exc.status, "error")


class Warmup:
    """Per-container state for the warmup function: one HTTP client and one Hub client."""

    def __init__(self, settings: Settings, *, hub: WarmupHub | None,
                 transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], datetime] = utc_now,
                 hub_for: Callable[[str], WarmupHub | None] | None = None) -> None:
        self.settings = settings
        self.schedule = Schedule.parse(settings.warm_schedule)
        # `hub` holds HF_TOKEN; a deployment with a `hub_token` of its own gets `hub_for`'s.
        self.hub = hub
        self._hub_for = hub_for
        self._hubs: dict[str, WarmupHub | None] = {settings.hf_token: hub}
        self._clock = clock
        self.timeout_s = settings.warmup_timeout_ms / 1000.0
        self.client = httpx.Client(transport=transport or httpx.HTTPTransport(retries=0),
                                   follow_redirects=False, trust_env=False,
                                   headers={"user-agent": "chat-router-warmup/0.1"})

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def ping(self, base_url: str, headers: Mapping[str, str]) -> dict[str, Any]:
        """GET `{base_url}/health` once, bounded by WARMUP_TIMEOUT_MS."""
        started = time.monotonic()
        try:
            response = self.client.get(f"{base_url}/health", headers=dict(headers),
                                       timeout=self.timeout_s)
        except httpx.TimeoutException:
            return {"status": "timeout", "latency_ms": _ms(started)}
        except httpx.HTTPError as exc:
            return {"status": "unreachable", "error": type(exc).__name__,
                    "latency_ms": _ms(started)}
        return {"status": classify(response), "http": response.status_code,
                "latency_ms": _ms(started)}

    def hub_of(self, deployment: Deployment) -> WarmupHub | None:
        """The Hub client for a deployment's Hub token (made once per token)."""
        token = deployment.hub_token
        if token not in self._hubs:
            self._hubs[token] = self._hub_for(token) if self._hub_for else None
        return self._hubs[token]

    def health(self, window_open: bool) -> dict[str, dict[str, Any]]:
        """Ping every deployment (a Space or endpoint inside the window only) and, when
        configured, `ask`."""
        out: dict[str, dict[str, Any]] = {}
        for deployment in self.settings.deployments:
            if deployment.sleeps and not window_open:
                # A request is activity: it would keep it awake (billed) off-hours.
                out[deployment.name] = {"status": "skipped", "reason": "outside_window"}
                continue
            out[deployment.name] = self.ping(deployment.url, deployment.headers())
        if "space" not in out and not self.settings.has_space:
            out["space"] = {"status": "not_configured"}
        ask_url = self.settings.ask_url.rstrip("/")
        if ask_url.startswith(("http://", "https://")):
            out["ask"] = self.ping(ask_url, {WARMUP_HEADER: "1"})
        elif ask_url:
            out["ask"] = {"status": "misconfigured"}
        return out

    def space(self, window_open: bool, actions: list[str]) -> tuple[dict[str, Any], str]:
        """SPACE_ID's Space: read its stage, wake it inside the window; (its report, wake)."""
        if self.hub is None or not self.settings.space_id:
            return {"configured": False}, "not_configured"
        return self._space(self.hub, self.settings.space_id, window_open, actions, "")

    def deployments(self, window_open: bool, actions: list[str]
                    ) -> dict[str, dict[str, Any]]:
        """Every other Space or endpoint the router may wake (LLM_DEPLOYMENTS' with an `id`),
        kept for the window; each report carries what was done (`wake`)."""
        out: dict[str, dict[str, Any]] = {}
        for deployment in self.settings.deployments:
            if not deployment.can_wake or (deployment.kind == "space"
                                           and deployment.hub_id == self.settings.space_id):
                continue
            hub = self.hub_of(deployment)
            if hub is None:
                out[deployment.name] = {"configured": False, "wake": "not_configured"}
                continue
            if deployment.kind == "endpoint":
                report, wake = keep_warm(hub, deployment, window_open, actions)
            else:
                report, wake = self._space(hub, deployment.hub_id, window_open, actions,
                                           f"{deployment.name}:")
                report["kind"] = "space"
            out[deployment.name] = {**report, "wake": wake}
        return out

    def _space(self, hub: WarmupHub, repo_id: str, window_open: bool, actions: list[str],
               label: str) -> tuple[dict[str, Any], str]:
        started = time.monotonic()
        report: dict[str, Any] = {"id": repo_id}
        try:
            runtime = hub.get_space_runtime(repo_id)
            raw = getattr(runtime, "raw", None) or {}
            stage = str(getattr(runtime, "stage", "") or "")
            report.update(stage=stage, hardware=getattr(runtime, "hardware", None),
                          sleep_time_s=raw.get("gcTimeout"))
            wake = self._wake(hub, repo_id, stage, window_open, report, actions, label)
        except HubError as exc:
            report.update(error=hub_reason(exc), hub_status=exc.status)
            wake = "hub_error"
        report["latency_ms"] = _ms(started)
        return report, wake

    def _wake(self, hub: WarmupHub, repo_id: str, stage: str, window_open: bool,
              report: dict[str, Any], actions: list[str], label: str) -> str:
        if not window_open:
            wanted = self.settings.space_sleep_time_s
            if wanted is not None and report.get("sleep_time_s") != wanted:
                hub.set_space_sleep_time(repo_id, wanted)
                actions.append(f"{label}set_space_sleep_time")
                report["sleep_time_s"] = wanted
            return "outside_window"
        if stage in READY_STAGES:
            return "running"
        if stage in STARTING_STAGES:
            return "starting"
        if stage not in WAKE_STAGES:
            return "broken"  # BUILD_ERROR, CONFIG_ERROR, NO_APP_FILE: a restart will not help
        # The same code as the router's wake path: it reads the stage again, then restarts.
        after, restarted = wake_space(hub, repo_id)
        if restarted:
            actions.append(f"{label}restart_space")
            report["stage_after"] = after
            return "restarted"
        report["stage"] = after
        return "running" if after in READY_STAGES else "starting"

    def run(self, source: str = "manual") -> dict[str, Any]:
        """One warm-up run; the returned report is what `doctl ... invoke chat/warmup` shows."""
        started = time.monotonic()
        now = self._clock()
        window_open = self.schedule.is_open(now)
        actions: list[str] = []
        health = self.health(window_open)
        if "ask" in health:
            actions.append("warm_ask")
        space, wake = self.space(window_open, actions)
        others = self.deployments(window_open, actions)
        always_on = [d.name for d in self.settings.deployments if not d.sleeps]
        ok = (all(health[name]["status"] == "ok" for name in always_on)
              and all(w not in ("hub_error", "broken")
                      for w in (wake, *(r["wake"] for r in others.values())))
              and health.get("ask", {"status": "ok"})["status"] == "ok")
        report = {
            "ok": ok, "source": source, "time": now.isoformat(timespec="seconds"),
            "window": {"schedule": self.schedule.text or "always", "open": window_open,
                       "off_hours": self.settings.off_hours},
            "health": health, "space": space, "wake": wake, "deployments": others,
            "actions": actions, "latency_ms": _ms(started),
        }
        log.info("warmup run", extra={"fields": {
            "ok": ok, "window_open": window_open, "wake": wake, "actions": actions,
            "stage": space.get("stage"), "worker": health["worker"]["status"],
            "space_health": health.get("space", {}).get("status"),
            "deployments": {name: r["wake"] for name, r in others.items()},
            "latency_ms": report["latency_ms"]}})
        return report


HubFactory = Callable[[Settings], WarmupHub | None]


def default_hub(settings: Settings) -> WarmupHub | None:
    """HfApi (through HubClient) at HF_ENDPOINT with HF_TOKEN, when something can be woken."""
    if not settings.can_wake or not settings.hf_token:
        return None
    return hub_with_token(settings, settings.hf_token)


def hub_with_token(settings: Settings, token: str) -> WarmupHub:
    """HfApi (through HubClient) for one Hub token: Spaces at HF_ENDPOINT, endpoints at
    HF_ENDPOINTS_API."""
    from router._hub import HubClient

    return HubClient(settings.hf_endpoint, token, timeout_s=HUB_TIMEOUT_S,
                     endpoints_api=settings.hf_endpoints_api)


class WarmupFunction:
    """The warmup entry's per-container state, held in a module global of `__main__.py`."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 hub_factory: HubFactory = default_hub,
                 hub_for: Callable[[Settings, str], WarmupHub | None] | None = hub_with_token
                 ) -> None:
        def build(settings: Settings) -> Warmup:
            for noisy in ("httpx2", "httpcore2"):  # huggingface_hub's client logs URLs
                logging.getLogger(noisy).setLevel(logging.WARNING)
            return Warmup(settings, hub=hub_factory(settings),
                          hub_for=None if hub_for is None
                          else lambda token: hub_for(settings, token))

        self._state: PerContainer[Warmup] = PerContainer(build, env)

    def warmup(self) -> Warmup:
        """The Warmup, built once from the environment (the edge reads it, nobody else)."""
        return self._state.get()

    def close(self) -> None:
        """Close the clients (tests; never needed on DigitalOcean)."""
        self._state.close()

    def __call__(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        """Run once; a configuration error becomes a report, never a traceback."""
        try:
            warmup = self.warmup()
        except ConfigError as exc:
            log.error("warmup misconfigured", extra={"fields": {"code": exc.code}})
            # The same error body as `ask`'s 503 (router/_status.py), inside the run's report.
            status, kind = status_for(exc)
            return {"ok": False, "status": status,
                    "error": {"type": kind, "message": exc.message, "code": exc.code}}
        source = event.get("source") if isinstance(event, Mapping) else None
        return warmup.run(str(source)[:32] if source else "manual")
