"""The load test's clients, in a process of their own: `python -m tests.support.load_client`.

Real callers are elsewhere; run in the server's own process, the clients would share its GIL
and measure their own queueing as the router's latency. Reads `{url, clients, rounds, bodies}`
as JSON on stdin and writes one JSON line per answer: status, ms, headers, body.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx


async def burst(url: str, clients: int, rounds: int,
                bodies: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """`clients` at once, `rounds` requests each, each request on a new connection."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one(i: int) -> dict[str, Any]:
            path, body = bodies[i % len(bodies)]
            started = time.monotonic()
            response = await client.post(url + path, json=body)
            return {"status": response.status_code,
                    "ms": (time.monotonic() - started) * 1000,
                    "headers": dict(response.headers), "body": response.text}

        async def client_loop(i: int) -> list[dict[str, Any]]:
            return [await one(i + r) for r in range(rounds)]

        per_client = await asyncio.gather(*(client_loop(i) for i in range(clients)))
    return [answer for answers in per_client for answer in answers]


def main() -> None:
    """Run one burst as stdin describes it; answers go to stdout, one JSON line each."""
    spec = json.load(sys.stdin)
    answers = asyncio.run(burst(spec["url"], spec["clients"], spec["rounds"],
                                [tuple(b) for b in spec["bodies"]]))
    for answer in answers:
        sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
