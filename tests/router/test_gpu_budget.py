"""One GPU budget, counted where the GPU is spent (issue 19, item 3), in the function.

LLM_RATE_LIMIT_PER_MINUTE is asked before every attempt that would reach the Space, whatever
sent it there; over it the Space leaves the request's order, and a request that the worker
cannot serve gets 429. Counted in a real, password-protected redis-server.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from router._quota import KEY_PREFIX
from tests.conftest import Main, with_body
from tests.fakes.openai_backend import FakeBackend
from tests.support.access import ctx
from tests.support.redis_server import RedisServer

TOO_LONG = {"error": {"code": "context_length_exceeded", "type": "invalid_request_error",
                      "message": "This model's maximum context length is 2048 tokens"}}
SMALL = {"model": "small", "messages": [{"role": "user", "content": "a long prompt " * 50}]}
ADDRESS = "203.0.113.7"


def small(main: Main) -> dict[str, Any]:
    """A `small` chat from one open-function client, through the real handler."""
    result = main(with_body("chat_completions", SMALL, headers={"x-forwarded-for": ADDRESS}),
                  ctx())
    return {**result, "json": json.loads(result["body"])}


def llm_count(server: RedisServer) -> int:
    """The client's GPU-budget count, as Redis holds it."""
    value = redis.Redis.from_url(server.url).get(f"{KEY_PREFIX}llm:ip:{ADDRESS}")
    return int(value or 0)


def test_a_context_length_fallback_to_the_space_is_counted(
        make_main, env: dict[str, str], worker: FakeBackend, space: FakeBackend,
        redis_server: RedisServer):
    """GIVEN LLM_RATE_LIMIT_PER_MINUTE=1 in Redis and a worker whose window is too small
    (400 context_length_exceeded) WHEN one client sends two `small` chats THEN the first falls
    back to the Space and is counted; the second, over the GPU budget, gets 429 rate_limited
    with Retry-After (the worker cannot serve it), and the Space never sees it."""
    worker.mode, worker.error_body = "status:400", TOO_LONG
    main = make_main({**env, "LLM_RATE_LIMIT_PER_MINUTE": "1", "REDIS_URL": redis_server.url})
    first = small(main)
    assert (first["statusCode"], first["headers"]["x-chat-backend"]) == (200, "space")
    assert first["headers"]["x-chat-fallback"] == "context_length_exceeded"
    assert llm_count(redis_server) == 1
    second = small(main)
    assert second["statusCode"] == 429
    assert second["json"]["error"]["code"] == "rate_limited"
    assert 1 <= int(second["headers"]["retry-after"]) <= 60
    assert space.generation_requests() == 1
    assert worker.generation_requests() == 2


def test_a_circuit_open_fallback_to_the_space_is_counted(
        make_main, env: dict[str, str], worker: FakeBackend, space: FakeBackend,
        redis_server: RedisServer):
    """GIVEN LLM_RATE_LIMIT_PER_MINUTE=1 in Redis and a worker that fails once, which opens its
    circuit (BREAKER_FAILURES=1) WHEN one client sends three `small` chats THEN the first is
    answered by the Space (counted), and the next two, with the worker's circuit open and the
    budget spent, get 429 rather than reaching the Space."""
    worker.mode = "status:503"
    main = make_main({**env, "LLM_RATE_LIMIT_PER_MINUTE": "1", "REDIS_URL": redis_server.url,
                      "BREAKER_FAILURES": "1", "BREAKER_COOLDOWN_S": "600"})
    first = small(main)
    assert (first["statusCode"], first["headers"]["x-chat-backend"]) == (200, "space")
    assert first["headers"]["x-chat-fallback"] == "unavailable"
    later = [small(main) for _ in range(2)]
    assert [answer["statusCode"] for answer in later] == [429, 429]
    assert space.generation_requests() == 1
    assert worker.generation_requests() == 1  # its circuit is open: skipped, not re-sent
    assert llm_count(redis_server) == 3


def test_over_the_budget_a_first_choice_space_degrades_to_the_worker(
        make_main, env: dict[str, str], space: FakeBackend, redis_server: RedisServer):
    """GIVEN LLM_RATE_LIMIT_PER_MINUTE=1 in Redis WHEN one client asks for the LLM twice THEN
    the second is the worker's answer with `X-Chat-Fallback: quota` (the worker can serve it),
    and the Space saw one request."""
    main = make_main({**env, "LLM_RATE_LIMIT_PER_MINUTE": "1", "REDIS_URL": redis_server.url})
    event = with_body("chat_completions", {**SMALL, "model": "llm"},
                      headers={"x-forwarded-for": ADDRESS})
    answers = [main(event, ctx()) for _ in range(2)]
    assert [a["headers"]["x-chat-backend"] for a in answers] == ["space", "worker"]
    assert answers[1]["headers"]["x-chat-fallback"] == "quota"
    assert space.generation_requests() == 1
