"""Issue 11's router defects, each through the real `main` against fakes on loopback."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from router._do_event import FunctionContext
from tests.conftest import load_event
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend

DEADLINE_MS = 3000


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "ROUTER_DEADLINE_MS": str(DEADLINE_MS), "FALLBACK_RESERVE_MS": "1500"}


def _ctx() -> FunctionContext:
    return FunctionContext.with_timeout(28_000)


def test_short_caller_deadlines_do_not_open_a_healthy_spaces_circuit(
        make_main, fast_env, worker: FakeBackend, space: FakeBackend):
    """GIVEN a healthy Space that answers in 0.8 s and BREAKER_FAILURES=3
    WHEN five callers send X-Chat-Deadline-Ms at the floor (their Space share is 0.5 s)
    THEN each falls back on `timeout`, but the Space's circuit stays closed, and the next
    request with the normal deadline is served by the Space."""
    space.mode, space.delay_s = "slow", 0.8
    main = make_main({**fast_env, "BREAKER_FAILURES": "3", "MIN_DEADLINE_MS": "1000"})
    short = load_event("chat_completions_llm", headers={"x-chat-deadline-ms": "1000"})
    reasons = [main(short, _ctx())["headers"].get("x-chat-fallback") for _ in range(5)]
    assert reasons == ["timeout"] * 5
    engine = main.__globals__["FUNCTION"].router().engine
    assert engine.breakers["space"].state == "closed"
    normal = main(load_event("chat_completions_llm"), _ctx())
    assert normal["headers"]["x-chat-backend"] == "space"
    assert "x-chat-fallback" not in normal["headers"]


def test_an_attempt_with_no_time_left_never_counts_against_the_backend(
        make_main, fast_env, worker: FakeBackend, space: FakeBackend):
    """GIVEN a platform context with less time left than the deadline margin
    WHEN requests come THEN they fail with 504 at once, and no breaker has counted a failure."""
    main = make_main({**fast_env, "BREAKER_FAILURES": "1"})
    for _ in range(3):
        result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(400))
        assert result["statusCode"] == 504
    states = main.__globals__["FUNCTION"].router().engine.breaker_states()
    assert states == {"worker": "closed", "space": "closed"}
    assert space.generation_requests() == worker.generation_requests() == 0


def test_a_drip_feeding_backend_is_dropped_at_the_attempts_end(
        make_main, fast_env, worker: FakeBackend, space: FakeBackend):
    """GIVEN a Space that sends one byte every 50 ms for 20 s (each read inside any read timeout)
    WHEN an `llm` request comes THEN the worker answers within the deadline, and the router
    hung up on the Space by the end of the Space's share (1.5 s), not 20 s later."""
    space.mode, space.delay_s = "drip", 20.0
    main = make_main(fast_env)
    started = time.monotonic()
    result = main(load_event("chat_completions_llm"), _ctx())
    assert result["headers"]["x-chat-backend"] == "worker"
    assert result["headers"]["x-chat-fallback"] == "timeout"
    assert (time.monotonic() - started) * 1000 < DEADLINE_MS + 100
    assert space.dropped_at, "the router never hung up on the dripping Space"
    assert space.dropped_at[0] - started < 1.5 + 0.3


def test_many_drip_fed_attempts_do_not_starve_the_others(
        make_main, fast_env, worker: FakeBackend, space: FakeBackend):
    """GIVEN a Space that drips bytes for 20 s WHEN 24 `llm` requests come at once (more than
    any attempt pool) THEN every one is answered by the worker within the deadline: no attempt
    waits behind another, and none is reported as sent when it never left."""
    space.mode, space.delay_s = "drip", 20.0
    main = make_main({**fast_env, "BREAKER_FAILURES": "100"})

    def one(_: int) -> tuple[int, str, float]:
        started = time.monotonic()
        result = main(load_event("chat_completions_llm"), _ctx())
        return (result["statusCode"], result["headers"].get("x-chat-backend", ""),
                (time.monotonic() - started) * 1000)

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    assert all(status == 200 and backend == "worker" for status, backend, _ in answers), answers
    assert max(ms for _, _, ms in answers) < DEADLINE_MS + 300


def test_an_oversize_answer_falls_back_to_the_other_backend(
        make_main, fast_env, worker: FakeBackend, space: FakeBackend):
    """GIVEN a worker whose answer is over the platform's 1 MB (but under the 2 MB read cap)
    WHEN a `small` chat comes THEN the Space answers it (a backend failure, reason `error`),
    not a 413 that blames the caller."""
    worker.mode, worker.huge_bytes = "huge", 1_100_000
    result = make_main(fast_env)(load_event("chat_completions"), _ctx())
    assert result["statusCode"] == 200
    assert result["headers"]["x-chat-backend"] == "space"
    assert result["headers"]["x-chat-fallback"] == "error"


@pytest.mark.parametrize("stream", [False, True])
def test_an_oversize_answer_with_no_backend_left_is_a_502(
        make_main, fast_env, worker: FakeBackend, stream: bool):
    """GIVEN only a worker, whose answer is over 1 MB WHEN a chat comes (streamed or not)
    THEN 502 `response_too_large`: the backend failed, not the caller's request."""
    worker.mode, worker.huge_bytes = "huge", 1_100_000
    body = {"model": "small", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    event = load_event("chat_completions", body=json.dumps(body))
    result = make_main({**fast_env, "SPACE_URL": ""})(event, _ctx())
    assert result["statusCode"] == 502
    assert json.loads(result["body"])["error"]["code"] == "response_too_large"


def test_a_slow_hub_does_not_hold_the_answer(make_main, fast_env, worker: FakeBackend,
                                             space: FakeBackend, hub: FakeHub):
    """GIVEN a sleeping Space, a Hub that takes 2 s to answer, and WAKE_GRACE_MS=5000
    WHEN an `llm` request falls back THEN the worker's answer leaves within 0.5 s of the wake
    grace cap, not after the Hub's 2 s; the wake still reaches the Hub."""
    space.mode = "sleeping"
    hub.delay_s = 2.0
    main = make_main({**fast_env, "WAKE_GRACE_MS": "5000"})
    started = time.monotonic()
    result = main(load_event("chat_completions_llm"), _ctx())
    elapsed = time.monotonic() - started
    assert result["headers"]["x-chat-fallback"] == "space_sleeping"
    assert elapsed < 1.0, f"the answer waited {elapsed:.2f} s for the wake"
    assert hub.restarted.wait(10), "no wake request reached the Hub"
