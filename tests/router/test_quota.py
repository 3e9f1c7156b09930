"""Per-subject quotas with the in-memory counters: 429 over the limit, the worker over the LLM's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from router._counter import MemoryCounter, Window
from router_tools.token_cli import mint
from tests.conftest import Main, load_event
from tests.fakes.openai_backend import FakeBackend
from tests.support.access import SECRET, ask, bearer, ctx


def from_ip(main: Main, forwarded: str, name: str = "chat_completions") -> dict[str, Any]:
    """A request with no credential, from `forwarded` (the x-forwarded-for header)."""
    result = main(load_event(name, headers={"x-forwarded-for": forwarded}), ctx())
    return {**result, "json": json.loads(result["body"])}


def test_rate_limit_per_subject(make_main, env):
    """GIVEN RATE_LIMIT_PER_MINUTE=3 and client tokens WHEN alice sends 4 requests, then bob 1
    THEN alice's 4th gets 429 rate_limited with a Retry-After within the minute; bob is served;
    /health is never counted."""
    main = make_main({**env, "CLIENT_TOKEN_SECRET": SECRET, "RATE_LIMIT_PER_MINUTE": "3"})
    alice = bearer(mint(SECRET, "alice", 600))
    statuses = [ask(main, alice)["statusCode"] for _ in range(3)]
    for _ in range(5):
        ask(main, {}, "health")
    over = ask(main, alice)
    assert statuses == [200, 200, 200]
    assert over["statusCode"] == 429
    assert over["json"]["error"]["code"] == "rate_limited"
    assert 1 <= int(over["headers"]["retry-after"]) <= 60
    assert ask(main, bearer(mint(SECRET, "bob", 600)))["statusCode"] == 200


def test_open_function_counts_by_client_address(make_main, env):
    """GIVEN an open function and RATE_LIMIT_PER_MINUTE=2 WHEN one address sends 3 requests,
    the 3rd with a forged address prepended, and another address 1 THEN the forged one is still
    counted against the real address (429); the other address is served."""
    main = make_main({**env, "RATE_LIMIT_PER_MINUTE": "2"})
    first = [from_ip(main, "203.0.113.7")["statusCode"] for _ in range(2)]
    forged = from_ip(main, "198.51.100.1, 203.0.113.7")
    assert first == [200, 200]
    assert forged["statusCode"] == 429
    assert from_ip(main, "203.0.113.8")["statusCode"] == 200


def test_llm_quota_degrades_to_the_worker(make_main, env, worker: FakeBackend,
                                          space: FakeBackend):
    """GIVEN LLM_RATE_LIMIT_PER_MINUTE=1 WHEN one subject asks for the LLM twice, then for the
    small model THEN the 1st is served by the Space, the 2nd by the worker with
    `X-Chat-Fallback: quota` (still an answer), and small-model requests are not counted."""
    main = make_main({**env, "LLM_RATE_LIMIT_PER_MINUTE": "1"})
    first = from_ip(main, "203.0.113.7", "chat_completions_llm")
    space_calls = space.generation_requests()
    second = from_ip(main, "203.0.113.7", "chat_completions_llm")
    small = from_ip(main, "203.0.113.7")
    assert (first["statusCode"], first["headers"]["x-chat-backend"]) == (200, "space")
    assert (second["statusCode"], second["headers"]["x-chat-backend"]) == (200, "worker")
    assert second["headers"]["x-chat-fallback"] == "quota"
    assert space.generation_requests() == space_calls
    assert (small["statusCode"], small["headers"]["x-chat-backend"]) == (200, "worker")
    assert "x-chat-fallback" not in small["headers"]
    other = from_ip(main, "203.0.113.9", "ai_generate")  # another subject: its own quota
    assert other["headers"]["x-chat-backend"] == "space"


def test_memory_windows_reset_after_a_minute():
    """GIVEN the in-memory counter and a clock the test moves WHEN a key is hit twice, the clock
    passes the window, and it is hit again THEN the counts are 1, 2, then 1 with a fresh window."""
    now = [1_000.0]
    counter = MemoryCounter(clock=lambda: now[0])

    def hit() -> Window:
        return asyncio.run(counter.hit("k", 60))

    assert [hit().count for _ in range(2)] == [1, 2]
    now[0] += 59.5
    assert hit().reset_s == 0.5
    now[0] += 1
    window = hit()
    assert (window.count, window.reset_s) == (1, 60)


def test_memory_counter_stays_bounded():
    """GIVEN a counter for at most 3 keys WHEN 5 subjects arrive within one window THEN it never
    holds more than 3 (a flood of subjects forgets old counts rather than growing)."""
    counter = MemoryCounter(clock=lambda: 0.0, max_keys=3)
    for index in range(5):
        asyncio.run(counter.hit(f"k{index}", 60))
        assert len(counter) <= 3
