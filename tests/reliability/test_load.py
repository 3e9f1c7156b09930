"""Load: concurrent requests through the gateway while the Space flaps asleep and awake.

GIVEN the real `main` behind the local gateway, a healthy worker, and a Space that cycles
awake / sleeping page / 503 every 150 ms on its own clock, WHEN LOAD_REQUESTS clients (200 in
`make reliability`) each send ROUNDS requests, all clients at once, THEN every answer is a 2xx
or the documented 503/504, the p99 latency is within the deadline, and the sockets and threads
the load opened are all gone once it ends.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router_service import Service
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import LOAD_REQUESTS, Ledger, Results
from tests.support.service import serve_main, wake_threads

DEADLINE_MS = 2000
ROUNDS = 3
SETTLE_S = 15.0
BODIES = [
    ("/v1/chat/completions", {"model": "llm", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "draft a proposal"}]}),
    ("/ai/generate", {"prompt": "write a haiku about uptime", "max_length": 16}),
    ("/v1/chat/completions", {"model": "small", "messages": [{"role": "user", "content": "yo"}]}),
    ("/v1/embeddings", {"input": ["a", "b"]}),
]


def open_sockets() -> int:
    """Sockets this process holds (client and server ends alike)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue  # closed while we looked
    return count


POOL_PREFIX = "router-loop"  # router/_event_loop.py: one loop thread per container, kept warm
POOL_MAX = 1


def threads() -> int:
    """Python threads alive in this process, but for the router's event-loop thread (it lives
    as long as the container, by design: one, POOL_MAX) and a wake's watch (one per
    deployment at most, until the deployment runs: counted by `wake_threads`)."""
    return sum(1 for t in threading.enumerate()
               if not t.name.startswith((POOL_PREFIX, "wake-")))


def pool_threads() -> int:
    """The router's event-loop threads."""
    return sum(1 for t in threading.enumerate() if t.name.startswith(POOL_PREFIX))


def settle(before: tuple[int, int], limit_s: float) -> tuple[int, int]:
    """Wait (bounded, on the condition) until sockets and threads are back to `before`."""
    waiter = threading.Event()
    end = time.monotonic() + limit_s
    now = (open_sockets(), threads())
    while (now[0] > before[0] or now[1] > before[1]) and time.monotonic() < end:
        waiter.wait(0.05)
        now = (open_sockets(), threads())
    return now


def burst(url: str, n: int, rounds: int, ledger: Ledger) -> list[tuple[int, float, str]]:
    """`n` clients at once, `rounds` requests each, from a process of their own (as real
    callers are: in ours they would share the server's GIL); (status, ms, backend) each."""
    spec = {"url": url, "clients": n, "rounds": rounds, "bodies": BODIES}
    ran = subprocess.run([sys.executable, "-m", "tests.support.load_client"],
                         input=json.dumps(spec), capture_output=True, text=True, timeout=120,
                         check=True)
    out: list[tuple[int, float, str]] = []
    for line in ran.stdout.splitlines():
        answer = json.loads(line)
        status, headers = answer["status"], answer["headers"]
        ledger.answer(status, headers, answer["body"])
        if status >= 400:
            assert json.loads(answer["body"])["error"]["code"]
        backend = headers.get("x-chat-backend", "-")
        fallback = headers.get("x-chat-fallback")
        out.append((status, answer["ms"], f"{backend}/{fallback}" if fallback else backend))
    return out


@pytest.fixture
def gateway(make_main: Callable[[dict[str, str]], Any], env: dict[str, str],
            space: FakeBackend) -> Iterator[Service]:
    space.mode = "flap"
    space.flap_period_s = 0.15
    # A short cool-down, so the breaker keeps probing the Space through its flaps.
    main = make_main({**env, "ROUTER_DEADLINE_MS": str(DEADLINE_MS),
                      "FALLBACK_RESERVE_MS": "1000", "BREAKER_COOLDOWN_S": "0.05"})
    gw = serve_main(main, namespace="load", port=0)
    yield gw
    gw.stop()


def test_load_with_a_flapping_space(gateway: Service, worker: FakeBackend, space: FakeBackend,
                                    ledger: Ledger, results: Results) -> None:
    url = gateway.function_url
    burst(url, LOAD_REQUESTS, 1, ledger)  # grow every pool to its working size
    before = settle((open_sockets(), threads()), 2.0)
    space_seen = len(space.seen)
    started = time.monotonic()
    answers = burst(url, LOAD_REQUESTS, ROUNDS, ledger)
    wall_s = time.monotonic() - started
    after = settle(before, SETTLE_S)

    statuses = Counter(status for status, _, _ in answers)
    backends = Counter(backend for _, _, backend in answers)
    latencies = sorted(ms for _, ms, _ in answers)
    p99 = latencies[max(0, round(0.99 * len(latencies)) - 1)]
    results.add("load", "figures", {
        "clients": LOAD_REQUESTS, "requests": len(answers), "wall_s": round(wall_s, 2),
        "p50_ms": round(statistics.median(latencies)), "p99_ms": round(p99),
        "max_ms": round(latencies[-1]), "deadline_ms": DEADLINE_MS,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answered_by": dict(sorted(backends.items())),
        "space_requests": len(space.seen) - space_seen,
        "sockets_before": before[0], "sockets_after": after[0],
        "threads_before": before[1], "threads_after": after[1],
        "pool_threads": pool_threads(),
    })

    assert all(s < 500 or s in (503, 504) for s in statuses), statuses
    assert statuses[200] > 0
    assert p99 <= DEADLINE_MS, latencies[-5:]
    assert after[0] <= before[0], f"sockets {before[0]} -> {after[0]}"
    assert after[1] <= before[1], \
        f"threads {before[1]} -> {after[1]}: {sorted(t.name for t in threading.enumerate())}"
    # The flapping Space is woken again and again (its hub never says RUNNING): one watch.
    assert len(wake_threads()) <= 1, wake_threads()
    assert pool_threads() <= POOL_MAX
