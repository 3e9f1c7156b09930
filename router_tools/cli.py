"""`python -m router_tools`: serve the gateway, replay prompts, run the local stack and its demo,
operate the Space, mint a client token."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from router import ChatRequest, Policy, RouterError, Settings
from router_service import add_serve_arguments, load_environment, serve
from router_tools.space_ops import add_space_commands
from router_tools.token_cli import add_token_command

log = logging.getLogger("router.cli")


def replay(lines: TextIO, settings: Settings) -> dict[str, Any]:
    """Route every JSONL prompt through the policy; count targets and reasons."""
    policy = Policy(settings)
    targets: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    errors = 0
    elapsed = 0.0
    for line in lines:
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if "prompt" in data and "messages" not in data:
                data = {**data, "messages": [{"role": "user", "content": data["prompt"]}]}
            chat = ChatRequest.model_validate(data)  # pydantic's error is a ValueError
            started = time.perf_counter()
            decision = policy.decide(chat.model, chat.messages, chat.wanted_tokens())
            elapsed += time.perf_counter() - started
        except (ValueError, RouterError):
            errors += 1
            continue
        targets[decision.target] += 1
        reasons[decision.reason] += 1
    total = sum(targets.values())
    return {
        "total": total,
        "errors": errors,
        "share": {t: round(targets[t] / total, 4) if total else 0.0 for t in ("worker", "space")},
        "counts": dict(targets),
        "reasons": dict(reasons.most_common()),
        "mean_decision_us": round(elapsed / total * 1e6, 2) if total else 0.0,
    }


def _cmd_policy(args: argparse.Namespace) -> int:
    env = load_environment(args.env_file)
    env.setdefault("WORKER_URL", "http://worker.invalid")
    settings = Settings.from_env(env)
    with open(args.file, encoding="utf-8") as handle:
        report = replay(handle, settings)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    out = [f"{report['total']} prompts ({report['errors']} unreadable), "
           f"decided in {report['mean_decision_us']} µs each on average",
           "| backend | share | count |", "|---|---|---|"]
    for target in ("worker", "space"):
        out.append(f"| {target} | {report['share'][target]:.1%} | "
                   f"{report['counts'].get(target, 0)} |")
    out += ["", "| reason | count |", "|---|---|"]
    out += [f"| {reason} | {count} |" for reason, count in report["reasons"].items()]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return serve(args)


def _cmd_stack(args: argparse.Namespace) -> int:
    from router_tools.stack import run
    from router_tools.stack_plan import default_state_file

    state_file = Path(args.state_file) if args.state_file else default_state_file()
    return run(load_environment(args.env_file), env_file=args.env_file, state_file=state_file,
               port=args.port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from router_tools.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="python -m router_tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve chat/ask on DigitalOcean's URL shape "
                                         "(the service: python -m router_service)")
    add_serve_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    policy = sub.add_parser("policy", help="replay a JSONL file of prompts through `auto`")
    policy.add_argument("file")
    policy.add_argument("--json", action="store_true")
    policy.add_argument("--env-file", default=".env")
    policy.set_defaults(func=_cmd_policy)
    add_space_commands(sub)
    add_token_command(sub)

    stack = sub.add_parser("stack", help="run the whole system on 127.0.0.1 (make run)")
    stack.add_argument("--port", type=int, default=None,
                       help="the gateway's port (default STACK_PORT or 8080; 0 = any free)")
    stack.add_argument("--env-file", default=".env")
    stack.add_argument("--state-file", default="",
                       help="where to record the URLs and local tokens for `demo`")
    stack.set_defaults(func=_cmd_stack)

    demo = sub.add_parser("demo", help="tour a running local stack, or start one (make demo)")
    demo.add_argument("--state-file", default="", help="the running stack's state file")
    demo.add_argument("--env-file", default=".env", help="for a stack the demo starts itself")
    demo.add_argument("--max-tokens", type=int, default=24)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (RouterError, ValueError, LookupError, OSError) as exc:
        message = exc.message if isinstance(exc, RouterError) else str(exc)
        sys.stderr.write(f"error: {message}\n")
        return 2
    return code
