"""Short caller deadlines against a slow but healthy Space, under concurrency (issue 11 #2).

GIVEN a Space that answers every chat in 0.7 s (healthy, just slow) and BREAKER_FAILURES=3,
WHEN callers who send X-Chat-Deadline-Ms at the floor (their Space share: 0.5 s) keep coming,
interleaved with callers on the normal deadline, THEN the short callers fall back to the worker,
the Space's circuit never opens, and every normal caller is served by the Space.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from router._do_event import FunctionContext
from tests.conftest import load_event
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import Results

ROUNDS = 4
SHORT_CALLERS = 6


def test_short_caller_deadlines_never_open_a_healthy_circuit(
        make_main: Callable[[dict[str, str]], Any], env: dict[str, str], worker: FakeBackend,
        space: FakeBackend, results: Results) -> None:
    space.mode, space.delay_s = "slow", 0.7
    main = make_main({**env, "ROUTER_DEADLINE_MS": "4000", "FALLBACK_RESERVE_MS": "1500",
                      "BREAKER_FAILURES": "3", "MIN_DEADLINE_MS": "1000"})
    short = load_event("chat_completions_llm", headers={"x-chat-deadline-ms": "1000"})

    def ask(event: dict[str, Any]) -> str:
        headers = main(event, FunctionContext.with_timeout(28_000))["headers"]
        return f"{headers.get('x-chat-backend')}/{headers.get('x-chat-fallback', '-')}"

    short_seen: Counter[str] = Counter()
    normal_seen: Counter[str] = Counter()
    with ThreadPoolExecutor(SHORT_CALLERS) as pool:
        for _ in range(ROUNDS):
            short_seen.update(pool.map(ask, [short] * SHORT_CALLERS))
            normal_seen[ask(load_event("chat_completions_llm"))] += 1
    state = main.__globals__["FUNCTION"].router().engine.breakers["space"].state
    results.add("caller_deadlines", "short caller deadlines vs a slow healthy Space", {
        "outcome": f"short: {dict(short_seen)}; normal: {dict(normal_seen)}; circuit {state}",
        "ms": 0, "sends": space.generation_requests()})
    assert short_seen == Counter({"worker/timeout": ROUNDS * SHORT_CALLERS})
    assert normal_seen == Counter({"space/-": ROUNDS})
    assert state == "closed"
