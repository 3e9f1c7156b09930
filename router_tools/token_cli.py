"""`python -m router_tools token --sub USER --ttl 600`: mint a client token for testing.

In production the platform's own backend mints these for its signed-in users (README,
Deploying); this command is the same few lines, for curl and for checking a deployment.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def mint(secret: str, subject: str, ttl_s: int, *, now: float | None = None,
         claims: dict[str, Any] | None = None) -> str:
    """A JWT (HS256) for `subject` that expires `ttl_s` seconds from now."""
    import jwt

    issued = int(time.time() if now is None else now)
    payload = {**(claims or {}), "sub": subject, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(payload, secret, algorithm="HS256")


def _cmd_token(args: argparse.Namespace) -> int:
    from router import Settings
    from router_service import load_environment

    env = load_environment(args.env_file)
    env.setdefault("WORKER_URL", "http://worker.invalid")  # not needed to mint
    settings = Settings.from_env(env)
    if not settings.client_token_secret:
        sys.stderr.write("error: CLIENT_TOKEN_SECRET is not set (environment or --env-file)\n")
        return 2
    if not 1 <= args.ttl <= settings.client_token_max_ttl_s:
        sys.stderr.write(f"error: --ttl must be 1..{settings.client_token_max_ttl_s} "
                         "(CLIENT_TOKEN_MAX_TTL_S); the function refuses longer-lived tokens\n")
        return 2
    sys.stdout.write(mint(settings.client_token_secret, args.sub, args.ttl) + "\n")
    return 0


def add_token_command(sub: Any) -> None:
    """Add `token` to the CLI's subcommands."""
    token = sub.add_parser("token", help="mint a client token (JWT) for testing")
    token.add_argument("--sub", required=True, help="the user id the token names")
    token.add_argument("--ttl", type=int, default=600, help="seconds until it expires")
    token.add_argument("--env-file", default=".env")
    token.set_defaults(func=_cmd_token)
