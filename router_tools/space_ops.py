"""Operating the Space through `huggingface_hub`: status, wake, sleep, pause, deploy, cost.

`huggingface_hub` is imported where it is used, never at module import:
`router_tools/cli.py` imports this module, and nothing heavy may ride along. Tokens come from the
environment (or `.env`) as HF_TOKEN, else from huggingface_hub's own token file; they are never
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from router import (
    READY_STAGES,
    STARTING_STAGES,
    ConfigError,
    HubClient,
    HubError,
    Runtime,
    Settings,
    backend_configs,
    stage_of,
    wake_space,
)
from router_service import load_environment

T = TypeVar("T")
# Stages a wait gives up on: the Space will not come up by waiting.
BROKEN_STAGES = frozenset({"BUILD_ERROR", "CONFIG_ERROR", "NO_APP_FILE", "RUNTIME_ERROR"})
UPLOAD_IGNORE = ["**/__pycache__/**", "*.pyc", ".pytest_cache/**", "**/.DS_Store", ".env"]


class HubOps(HubClient):
    """The Hub client plus what only an operator does: deploying the Space."""

    def deploy(self, repo_id: str, folder: Path, *, hardware: str, sleep_time_s: int | None,
               private: bool, secrets: Mapping[str, str], variables: Mapping[str, str],
               message: str) -> list[str]:
        """Create or update the Docker Space, then upload `folder`; return the steps taken."""
        steps: list[str] = []
        try:
            current: Runtime | None = self.get_space_runtime(repo_id)
        except HubError as exc:
            if exc.status != 404:
                raise
            current = None
        if current is None:
            self._call(self.api.create_repo, repo_id, repo_type="space", space_sdk="docker",
                       private=private, exist_ok=True, space_hardware=hardware,
                       space_sleep_time=sleep_time_s,
                       space_secrets=[{"key": k, "value": v} for k, v in secrets.items()],
                       space_variables=[{"key": k, "value": v} for k, v in variables.items()])
            steps.append(f"created Docker Space on {hardware}")
            steps += [f"secret {key} set" for key in secrets]
            steps += [f"variable {key} set" for key in variables]
        else:
            # Secrets and variables first: the upload's build then starts with them.
            for key, value in secrets.items():
                self._call(self.api.add_space_secret, repo_id, key, value)
                steps.append(f"secret {key} set")
            for key, value in variables.items():
                self._call(self.api.add_space_variable, repo_id, key, value)
                steps.append(f"variable {key} set")
            if current.raw.get("hardware", {}).get("requested") != hardware:
                self._call(self.api.request_space_hardware, repo_id, hardware)
                steps.append(f"hardware {hardware} requested")
            if sleep_time_s is not None and current.raw.get("gcTimeout") != sleep_time_s:
                self.set_space_sleep_time(repo_id, sleep_time_s)
                steps.append(f"sleep time {sleep_time_s} s set")
        info = self._call(self.api.upload_folder, repo_id=repo_id, folder_path=str(folder),
                          repo_type="space", commit_message=message,
                          ignore_patterns=UPLOAD_IGNORE)
        steps.append(f"uploaded {folder.name}/ (commit {str(info.oid)[:10]})")
        return steps


Progress = Callable[[str], None]


def wait_running(hub: HubOps, repo_id: str, *, timeout_s: float, interval_s: float,
                 progress: Progress, sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll the stage until RUNNING; raise HubError on a broken stage or at the timeout."""
    started = time.monotonic()
    last = ""
    while True:
        stage = stage_of(hub.get_space_runtime(repo_id))
        elapsed = time.monotonic() - started
        if stage != last:
            progress(f"stage {stage} after {elapsed:.0f} s")
            last = stage
        if stage in READY_STAGES:
            return stage
        if stage in BROKEN_STAGES:
            raise HubError(f"the Space is {stage}; see its logs on the Hub")
        if elapsed >= timeout_s:
            raise HubError(f"the Space is still {stage} after {timeout_s:.0f} s")
        sleep(interval_s)


def wait_healthy(settings: Settings, *, timeout_s: float, interval_s: float, progress: Progress,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll the Space's /health until it answers 200 JSON (the model is loaded)."""
    config = backend_configs(settings)["space"]
    started = time.monotonic()
    with httpx.Client(base_url=config.base_url, headers=config.headers, trust_env=False,
                      timeout=min(10.0, max(timeout_s, 1.0))) as client:
        while True:
            try:
                response = client.get("/health")
                ready = response.status_code == 200 and \
                    "json" in response.headers.get("content-type", "")
                what = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ready, what = False, type(exc).__name__
            elapsed = time.monotonic() - started
            progress(f"health {what} after {elapsed:.0f} s")
            if ready:
                return response.status_code
            if elapsed >= timeout_s:
                raise HubError(f"the Space's /health is not ready after {timeout_s:.0f} s")
            sleep(interval_s)


# --- `python -m router_tools space ...` --------------------------------------------------------

def _cli(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except HubError as exc:
            # Our own message: status and stage only, never a URL or a token.
            sys.stderr.write(f"error: {exc}\n")
            return 1

    return run


def _settings(args: argparse.Namespace) -> tuple[Settings, dict[str, str]]:
    env = load_environment(args.env_file)
    env.setdefault("WORKER_URL", "http://worker.invalid")
    return Settings.from_env(env), env


def _hub(settings: Settings, timeout_s: float = 30.0) -> tuple[HubOps, str]:
    if not settings.space_id:
        raise ConfigError("SPACE_ID is not set (owner/name of the Space)")
    return HubOps(settings.hf_endpoint, settings.hf_token, timeout_s=timeout_s), settings.space_id


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _cmd_status(args: argparse.Namespace) -> int:
    from router import Schedule

    settings, _ = _settings(args)
    hub, repo_id = _hub(settings)
    runtime = hub.get_space_runtime(repo_id)
    hardware = runtime.raw.get("hardware") or {}
    schedule = Schedule.parse(settings.warm_schedule)
    status = {"space": repo_id, "stage": runtime.stage, "hardware": hardware.get("current"),
              "requested_hardware": hardware.get("requested"),
              "sleep_time_s": runtime.raw.get("gcTimeout"),
              "schedule": schedule.text or "always",
              "window_open": schedule.is_open(datetime.now(UTC)),
              "off_hours": settings.off_hours}
    if args.json:
        _out(json.dumps(status, indent=2))
    else:
        _out("\n".join(f"{key}: {value}" for key, value in status.items()))
    return 0


def _cmd_wake(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)
    hub, repo_id = _hub(settings)
    stage, restarted = wake_space(hub, repo_id)
    _progress(f"{'restart requested, now' if restarted else 'no restart needed:'} {stage}")
    if stage not in READY_STAGES | STARTING_STAGES and not restarted:
        raise HubError(f"the Space is {stage}; a restart will not fix that")
    wait_running(hub, repo_id, timeout_s=args.timeout, interval_s=args.interval,
                 progress=_progress)
    if settings.has_space and not args.no_health:
        wait_healthy(settings, timeout_s=args.timeout, interval_s=args.interval,
                     progress=_progress)
    _out(f"{repo_id}: RUNNING")
    return 0


def _cmd_sleep(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)
    hub, repo_id = _hub(settings)
    seconds = args.seconds if args.seconds is not None else settings.space_sleep_time_s
    if seconds is None:
        raise ConfigError("give --seconds or set SPACE_SLEEP_TIME_S")
    hub.set_space_sleep_time(repo_id, seconds)
    _out(f"{repo_id}: sleeps after {seconds} s without requests" if seconds >= 0
         else f"{repo_id}: never sleeps (billed while running)")
    return 0


def _cmd_pause(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)
    hub, repo_id = _hub(settings)
    _out(f"{repo_id}: {hub.pause_space(repo_id)} (not billed; `space wake` restarts it)")
    return 0


def _pairs(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--var takes KEY=VALUE, got {key[:32]!r}")
        out[key] = value
    return out


def _cmd_deploy(args: argparse.Namespace) -> int:
    settings, env = _settings(args)
    hub, repo_id = _hub(settings, timeout_s=120.0)
    folder = Path(args.folder)
    if not (folder / "README.md").is_file() or not (folder / "Dockerfile").is_file():
        raise ConfigError(f"{folder} needs README.md (Space front matter) and a Dockerfile")
    if not settings.space_token:
        raise ConfigError("SPACE_TOKEN is not set: the Space's API_TOKEN comes from it")
    secrets = {"API_TOKEN": settings.space_token}
    for name in args.secret:
        if not env.get(name):
            raise ConfigError(f"--secret {name[:32]}: no such variable in the environment")
        secrets[name] = env[name]
    variables = {"EMBEDDING_MODEL_ID": "none", **_pairs(args.var)}
    sleep_time = args.sleep_time if args.sleep_time is not None else settings.space_sleep_time_s
    steps = hub.deploy(repo_id, folder, hardware=args.hardware or settings.space_hardware,
                       sleep_time_s=sleep_time, private=not args.public, secrets=secrets,
                       variables=variables, message=args.message)
    _out("\n".join(f"{repo_id}: {step}" for step in steps))
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    from router import Schedule
    from router_tools.cost import (
        FunctionUse,
        cron_runs_per_month,
        deployment_cost,
        estimate,
        format_report,
    )
    from router_tools.gateway import function_limits

    settings, _ = _settings(args)
    project = Path(args.project)
    import yaml  # the CLI only; never on a function's path

    data = yaml.safe_load(project.read_text())
    crons = [str((t.get("sourceDetails") or {}).get("cron", ""))
             for p in data.get("packages") or [] for f in p.get("functions") or []
             if f.get("name") == "warmup" for t in f.get("triggers") or []]
    warmup_runs = sum(cron_runs_per_month(c) for c in crons)
    functions = (
        FunctionUse("warmup", warmup_runs, args.warmup_seconds,
                    function_limits(project, function="warmup").get("memory", 256)),
        FunctionUse("ask", args.requests_per_day * 365.25 / 12, args.ask_seconds,
                    function_limits(project, function="ask").get("memory", 256)),
    )
    schedule = Schedule.parse(args.schedule if args.schedule is not None
                              else settings.warm_schedule)
    sleep_time = args.sleep_time if args.sleep_time is not None else settings.space_sleep_time_s
    # LLM_DEPLOYMENTS' Spaces and endpoints, each by its `instance` (a Space's hardware
    # defaults to SPACE_HARDWARE).
    more = tuple(deployment_cost(d.name, d.kind, d.instance or (
        settings.space_hardware if d.kind == "space" else ""), schedule,
        sleep_time_s=sleep_time, scale_to_zero_min=args.scale_to_zero_minutes)
        for d in settings.deployments if d.sleeps and d.name != "space")
    report = estimate(schedule, hardware=args.hardware or settings.space_hardware,
                      sleep_time_s=sleep_time, functions=functions,
                      price_per_hour=args.price_per_hour, off_hours=settings.off_hours,
                      deployments=more, space=bool(settings.space_url) or not more)
    _out(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    return 0


def add_space_commands(sub: Any) -> None:
    """Register `space status|wake|sleep|pause|deploy|cost` on the CLI's subparsers."""
    space = sub.add_parser("space", help="operate the Hugging Face Space (huggingface_hub)")
    space.add_argument("--env-file", default=".env")
    ops = space.add_subparsers(dest="space_command", required=True)

    status = ops.add_parser("status", help="stage, hardware, sleep time, keep-warm window")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cli(_cmd_status))

    wake = ops.add_parser("wake", help="restart if needed, then wait for RUNNING and /health")
    wake.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    wake.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    wake.add_argument("--no-health", action="store_true", help="do not wait for /health")
    wake.set_defaults(func=_cli(_cmd_wake))

    sleep = ops.add_parser("sleep", help="set the sleep time (seconds idle; -1 never)")
    sleep.add_argument("--seconds", type=int, default=None)
    sleep.set_defaults(func=_cli(_cmd_sleep))

    pause = ops.add_parser("pause", help="pause now: not billed until woken")
    pause.set_defaults(func=_cli(_cmd_pause))

    deploy = ops.add_parser("deploy", help="create/update the Docker Space and upload ai_space/")
    deploy.add_argument("--folder", default="ai_space")
    deploy.add_argument("--hardware", default=None, help="default: SPACE_HARDWARE")
    deploy.add_argument("--sleep-time", type=int, default=None,
                        help="default: SPACE_SLEEP_TIME_S")
    deploy.add_argument("--public", action="store_true", help="default: a private Space")
    deploy.add_argument("--secret", action="append", default=[], metavar="NAME",
                        help="also set this environment variable as a Space secret")
    deploy.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                        help="a Space variable, e.g. MODEL_ID=...")
    deploy.add_argument("--message", default="Deploy ai_space")
    deploy.set_defaults(func=_cli(_cmd_deploy))

    cost = ops.add_parser("cost", help="what a keep-warm schedule costs a month")
    cost.add_argument("--schedule", default=None, help="default: WARM_SCHEDULE")
    cost.add_argument("--hardware", default=None, help="default: SPACE_HARDWARE")
    cost.add_argument("--price-per-hour", type=float, default=None)
    cost.add_argument("--sleep-time", type=int, default=None,
                      help="default: SPACE_SLEEP_TIME_S")
    cost.add_argument("--scale-to-zero-minutes", type=int, default=60,
                      help="an endpoint's scale-to-zero timeout (Hugging Face's default: 60)")
    cost.add_argument("--requests-per-day", type=float, default=1000.0)
    cost.add_argument("--ask-seconds", type=float, default=1.0)
    cost.add_argument("--warmup-seconds", type=float, default=1.0)
    cost.add_argument("--project", default="project.yml")
    cost.add_argument("--json", action="store_true")
    cost.set_defaults(func=_cli(_cmd_cost))
