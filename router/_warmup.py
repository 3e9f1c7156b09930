"""The `warmup` function: ping the backends, read the Space's stage, wake it inside the window.

Each scheduled run (DigitalOcean trigger, `web: false`):
1. pings the worker's and (inside the window) the Space's `/health` with short timeouts;
2. reads the Space's runtime stage from the Hub (huggingface_hub, `SPACE_ID`, `HF_TOKEN`);
3. inside the keep-warm window (`WARM_SCHEDULE`), restarts a Space that is asleep, stopped or
   paused, through the router's own `wake_space`; outside it, leaves the Space to sleep and,
   when `SPACE_SLEEP_TIME_S` is set, makes sure the Space's sleep time is that value;
4. calls `ask` with the warm-up marker when `ASK_URL` is set, so its container stays warm;
5. returns a JSON report of stages, latencies and actions. No token or URL ever appears in it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import httpx

from router._backends import backend_configs
from router._config import Settings
from router._container import PerContainer
from router._errors import ConfigError
from router._http_types import WARMUP_HEADER
from router._schedule import Schedule, utc_now
from router._status import status_for
from router._wake import READY_STAGES, STARTING_STAGES, WAKE_STAGES, HubError, SpaceHub, wake_space

log = logging.getLogger("router.warmup")

HUB_TIMEOUT_S = 10.0


class WarmupHub(SpaceHub, Protocol):
    """What a run needs from the Hub: SpaceHub, plus setting the sleep time."""

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
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.settings = settings
        self.schedule = Schedule.parse(settings.warm_schedule)
        self.hub = hub
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

    def health(self, window_open: bool) -> dict[str, dict[str, Any]]:
        """Ping the worker, the Space (inside the window only) and, when configured, `ask`."""
        out: dict[str, dict[str, Any]] = {}
        for name, config in backend_configs(self.settings).items():
            if name == "space" and not window_open:
                # A request is activity: it would keep the Space awake (billed) off-hours.
                out[name] = {"status": "skipped", "reason": "outside_window"}
                continue
            out[name] = self.ping(config.base_url, config.headers)
        if "space" not in out:
            out["space"] = {"status": "not_configured"}
        ask_url = self.settings.ask_url.rstrip("/")
        if ask_url.startswith(("http://", "https://")):
            out["ask"] = self.ping(ask_url, {WARMUP_HEADER: "1"})
        elif ask_url:
            out["ask"] = {"status": "misconfigured"}
        return out

    def space(self, window_open: bool, actions: list[str]) -> tuple[dict[str, Any], str]:
        """Read the Space's stage; wake it inside the window; return (its report, wake)."""
        repo_id = self.settings.space_id
        if self.hub is None or not repo_id:
            return {"configured": False}, "not_configured"
        started = time.monotonic()
        report: dict[str, Any] = {"id": repo_id}
        try:
            runtime = self.hub.get_space_runtime(repo_id)
            raw = getattr(runtime, "raw", None) or {}
            stage = str(getattr(runtime, "stage", "") or "")
            report.update(stage=stage, hardware=getattr(runtime, "hardware", None),
                          sleep_time_s=raw.get("gcTimeout"))
            wake = self._wake(stage, window_open, report, actions)
        except HubError as exc:
            report.update(error=hub_reason(exc), hub_status=exc.status)
            wake = "hub_error"
        report["latency_ms"] = _ms(started)
        return report, wake

    def _wake(self, stage: str, window_open: bool, report: dict[str, Any],
              actions: list[str]) -> str:
        assert self.hub is not None
        repo_id = self.settings.space_id
        if not window_open:
            wanted = self.settings.space_sleep_time_s
            if wanted is not None and report.get("sleep_time_s") != wanted:
                self.hub.set_space_sleep_time(repo_id, wanted)
                actions.append("set_space_sleep_time")
                report["sleep_time_s"] = wanted
            return "outside_window"
        if stage in READY_STAGES:
            return "running"
        if stage in STARTING_STAGES:
            return "starting"
        if stage not in WAKE_STAGES:
            return "broken"  # BUILD_ERROR, CONFIG_ERROR, NO_APP_FILE: a restart will not help
        # The same code as the router's wake path: it reads the stage again, then restarts.
        after, restarted = wake_space(self.hub, repo_id)
        if restarted:
            actions.append("restart_space")
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
        ok = (health["worker"]["status"] == "ok" and wake not in ("hub_error", "broken")
              and health.get("ask", {"status": "ok"})["status"] == "ok")
        report = {
            "ok": ok, "source": source, "time": now.isoformat(timespec="seconds"),
            "window": {"schedule": self.schedule.text or "always", "open": window_open,
                       "off_hours": self.settings.off_hours},
            "health": health, "space": space, "wake": wake, "actions": actions,
            "latency_ms": _ms(started),
        }
        log.info("warmup run", extra={"fields": {
            "ok": ok, "window_open": window_open, "wake": wake, "actions": actions,
            "stage": space.get("stage"), "worker": health["worker"]["status"],
            "space_health": health["space"]["status"], "latency_ms": report["latency_ms"]}})
        return report


HubFactory = Callable[[Settings], WarmupHub | None]


def default_hub(settings: Settings) -> WarmupHub | None:
    """HfApi (through HubClient) at HF_ENDPOINT, when SPACE_ID and HF_TOKEN are set."""
    if not settings.can_wake:
        return None
    from router._hub import HubClient

    return HubClient(settings.hf_endpoint, settings.hf_token, timeout_s=HUB_TIMEOUT_S)


class WarmupFunction:
    """The warmup entry's per-container state, held in a module global of `__main__.py`."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 hub_factory: HubFactory = default_hub) -> None:
        def build(settings: Settings) -> Warmup:
            for noisy in ("httpx2", "httpcore2"):  # huggingface_hub's client logs URLs
                logging.getLogger(noisy).setLevel(logging.WARNING)
            return Warmup(settings, hub=hub_factory(settings))

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
