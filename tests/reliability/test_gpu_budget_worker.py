"""The GPU budget with our own worker (issue 19, item 3): the real ai_space refuses a prompt
longer than its window, and answers when the budget keeps a request from the Space.

The worker is ai_space on a tiny model (MAX_INPUT_TOKENS=512), the Space a fake behind HF's
edge, the counters a real, password-protected redis-server, the entry the real `main`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from router._do_event import FunctionContext
from tests.conftest import SPACE_TOKEN, with_body
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import WORKER_API_TOKEN, Ledger, served
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

Main = Callable[[dict[str, Any], Any], dict[str, Any]]
ADDRESS = "203.0.113.7"
LONG = "please read this sentence carefully " * 200  # well past the worker's 512 tokens


def chat(main: Main, ledger: Ledger, model: str, content: str) -> dict[str, Any]:
    """One chat from one open-function client through the real handler, recorded."""
    event = with_body("chat_completions", {"model": model, "max_tokens": 4, "messages": [
        {"role": "user", "content": content}]}, headers={"x-forwarded-for": ADDRESS})
    answer = main(event, FunctionContext.with_timeout(28_000))
    ledger.answer(answer["statusCode"], answer["headers"], answer["body"])
    return {**answer, "json": json.loads(answer["body"])}


def test_the_gpu_budget_holds_with_the_real_worker(make_main, worker_server: str,
                                                   ledger: Ledger, redis_server: RedisServer):
    """GIVEN LLM_RATE_LIMIT_PER_MINUTE=1 in Redis, ai_space as the worker and a healthy Space
    WHEN one client sends a `small` prompt too long for the worker, the same again, then a
    short `llm` chat THEN the first is answered by the Space after the worker's own
    context_length_exceeded (counted); the second gets 429 (the budget is spent and the worker
    cannot serve it); the third is the worker's answer with `X-Chat-Fallback: quota`."""
    space = FakeBackend("space", token=SPACE_TOKEN)
    with served(space) as space_url:
        main = make_main({"WORKER_URL": worker_server, "WORKER_TOKEN": WORKER_API_TOKEN,
                          "SPACE_URL": space_url, "SPACE_TOKEN": SPACE_TOKEN,
                          "LLM_RATE_LIMIT_PER_MINUTE": "1", "REDIS_URL": redis_server.url})
        first = chat(main, ledger, "small", LONG)
        second = chat(main, ledger, "small", LONG)
        third = chat(main, ledger, "llm", "Say hi.")
    assert (first["statusCode"], first["headers"]["x-chat-backend"]) == (200, "space")
    assert first["headers"]["x-chat-fallback"] == "context_length_exceeded"
    assert (second["statusCode"], second["json"]["error"]["code"]) == (429, "rate_limited")
    assert (third["statusCode"], third["headers"]["x-chat-backend"]) == (200, "worker")
    assert third["headers"]["x-chat-fallback"] == "quota"
    assert third["json"]["choices"][0]["message"]["content"] is not None
    assert space.generation_requests() == 1
