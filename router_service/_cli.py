"""`python -m router_service` (and `python -m router_tools serve`): the service's command line.

Settings come from the environment, over a `.env` file's values (the shell wins, as with
doctl); the deadline from project.yml's `limits.timeout`, as on DigitalOcean.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "project.yml"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file (KEY=VALUE lines, # comments, optional quotes)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path.name}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_environment(env_file: str | None) -> dict[str, str]:
    """The process environment over the `.env` file's values (the shell wins, as with doctl)."""
    env: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        env.update(read_env_file(Path(env_file)))
    env.update(os.environ)
    return env


def function_limits(project: Path = PROJECT, package: str = "chat", function: str = "ask"
                    ) -> dict[str, int]:
    """The function's `limits` (timeout in ms, memory in MB) as project.yml declares them."""
    import yaml  # only the service and the tools read project.yml, never the function

    data = yaml.safe_load(project.read_text())
    for pkg in data.get("packages", []):
        if pkg.get("name") != package:
            continue
        for fn in pkg.get("functions", []):
            if fn.get("name") == function:
                return {k: int(v) for k, v in (fn.get("limits") or {}).items()}
    raise LookupError(f"{package}/{function} is not in {project}")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's flags, shared by `python -m router_service` and `router_tools serve`."""
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--namespace", default=os.environ.get("NAMESPACE", "local"))
    parser.add_argument("--project", default=str(PROJECT))
    parser.add_argument("--timeout-ms", type=int, default=0,
                        help="override project.yml's limits.timeout")
    parser.add_argument("--env-file", default=".env")


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 2 when it cannot listen, 3 when a setting is bad."""
    from router import ChatRouter, ConfigError, Settings, configure_logging
    from router_service._limits import ServiceLimits
    from router_service._service import Service

    # The settings come from the environment, as the function's do on DigitalOcean; they are
    # read once, here, at the edge.
    env = load_environment(args.env_file)
    limits = ServiceLimits.from_env(env)
    timeout_ms = args.timeout_ms or function_limits(Path(args.project))["timeout"]
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 3
    configure_logging(settings, also=("uvicorn",))  # its lines as JSON too
    try:
        service = Service(ChatRouter(settings), namespace=args.namespace, timeout_ms=timeout_ms,
                          host=args.host, port=args.port, limits=limits)
    except OSError as exc:
        sys.stderr.write(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}\n")
        return 2
    logging.getLogger("router.service").info("serving", extra={"fields": {
        "function_url": service.function_url, "timeout_ms": timeout_ms}})
    service.serve_forever()  # SIGINT / SIGTERM: streams in flight finish, then it exits
    return 0 if service.server.started else 3  # 3: a bad setting stopped the startup


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and serve."""
    from router import RouterError

    parser = argparse.ArgumentParser(prog="python -m router_service", description=__doc__)
    add_serve_arguments(parser)
    try:
        return serve(parser.parse_args(argv))
    except (RouterError, ValueError, LookupError, OSError) as exc:
        message = exc.message if isinstance(exc, RouterError) else str(exc)
        sys.stderr.write(f"error: {message}\n")
        return 2
