"""Non-streamed backend failures that ended too early or too late (issue 13), via `main`."""

from __future__ import annotations

import json

import pytest

from router._do_event import FunctionContext
from tests.conftest import WORKER_TOKEN, load_event
from tests.fakes.openai_backend import FakeBackend

TOO_LONG = {"error": {"code": "context_length_exceeded", "type": "invalid_request_error",
                      "message": "This model's maximum context length is 2048 tokens; see "
                                 "https://owner-chat.hf.space/docs?key=hf_abcdefSecret1234"}}


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "ROUTER_DEADLINE_MS": "3000", "FALLBACK_RESERVE_MS": "1500"}


def test_a_500_is_sent_again_once(make_main, fast_env, worker: FakeBackend):
    """GIVEN a worker that answers 500, and no Space WHEN a chat comes THEN it is sent twice
    (our own servers bill by the minute), not three times, then the documented 503."""
    worker.mode = "status:500"
    result = make_main({**fast_env, "SPACE_URL": ""})(load_event("chat_completions"),
                                                      FunctionContext.with_timeout(28_000))
    assert result["statusCode"] == 503
    assert worker.generation_requests() == 2


def test_context_length_exceeded_tries_the_other_backend(make_main, fast_env,
                                                         worker: FakeBackend,
                                                         space: FakeBackend):
    """GIVEN a worker that answers 400 context_length_exceeded WHEN a `small` chat comes
    THEN the Space (which may have a larger window) answers it."""
    worker.mode, worker.error_body = "status:400", TOO_LONG
    result = make_main(fast_env)(load_event("chat_completions"),
                                 FunctionContext.with_timeout(28_000))
    assert result["statusCode"] == 200
    assert result["headers"]["x-chat-backend"] == "space"
    assert result["headers"]["x-chat-fallback"] == "context_length_exceeded"


def test_the_providers_error_reaches_the_caller_sanitised(make_main, fast_env,
                                                          worker: FakeBackend):
    """GIVEN only a worker, answering 400 context_length_exceeded with a URL and a token in its
    message WHEN a chat comes THEN 400 with the provider's code and message, without either."""
    worker.mode, worker.error_body = "status:400", TOO_LONG
    result = make_main({**fast_env, "SPACE_URL": ""})(load_event("chat_completions"),
                                                      FunctionContext.with_timeout(28_000))
    error = json.loads(result["body"])["error"]
    assert result["statusCode"] == 400
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith("This model's maximum context length is 2048 tokens")
    assert "hf.space" not in result["body"] and "hf_abcdef" not in result["body"]
    assert worker.generation_requests() == 1


def test_a_secret_is_scrubbed_before_the_message_is_cut(make_main, fast_env, worker: FakeBackend):
    """GIVEN only a worker, answering 400 with a message whose 300-character cut falls inside
    the worker's token, and which names the worker's host without a scheme WHEN chats come THEN
    the caller sees neither any part of the token nor the host (scrubbed first, then cut)."""
    host = worker.url.removeprefix("http://")
    main = make_main({**fast_env, "SPACE_URL": ""})
    messages = ["x" * 291 + WORKER_TOKEN + " rest", f"upstream {host} refused the prompt"]
    bodies = []
    for message in messages:
        worker.mode = "status:400"
        worker.error_body = {"error": {"code": "bad_prompt", "message": message}}
        result = main(load_event("chat_completions"), FunctionContext.with_timeout(28_000))
        assert result["statusCode"] == 400
        bodies.append(json.loads(result["body"])["error"]["message"])
    assert len(bodies[0]) <= 300 and WORKER_TOKEN[:5] not in bodies[0]
    assert bodies[1].startswith("upstream ") and host.split(":")[0] not in bodies[1]


def test_a_backend_that_sends_no_headers_is_given_up_at_the_first_token_limit(
        make_main, fast_env, worker: FakeBackend, space: FakeBackend):
    """GIVEN a Space that never answers at all (no headers), FIRST_TOKEN_TIMEOUT_MS=500, and a
    Space share of 1.5 s WHEN an `llm` chat comes to the function THEN the Space is given up
    after about 0.5 s, not at the end of its share, and the worker answers."""
    import time

    space.mode = "hang"
    main = make_main({**fast_env, "FIRST_TOKEN_TIMEOUT_MS": "500"})
    started = time.monotonic()
    result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    elapsed = time.monotonic() - started
    assert result["headers"]["x-chat-backend"] == "worker"
    assert result["headers"]["x-chat-fallback"] == "timeout"
    assert 0.45 < elapsed < 1.0, elapsed


def test_the_function_asks_backends_to_stream(make_main, fast_env, worker: FakeBackend):
    """GIVEN the function WHEN a chat comes THEN the backend is asked for a stream (with usage),
    which the function reads whole: the first-token and stall limits apply to it."""
    make_main({**fast_env, "SPACE_URL": ""})(load_event("chat_completions"),
                                             FunctionContext.with_timeout(28_000))
    sent = worker.seen[-1].body or {}
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
