"""DESIGN §4 through the real `main`: each Space failure falls back to the worker in time."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from router._do_event import FunctionContext
from tests.conftest import load_event
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend

DEADLINE_MS = 3000


def refused_url() -> str:
    """A loopback URL on which nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "ROUTER_DEADLINE_MS": str(DEADLINE_MS), "FALLBACK_RESERVE_MS": "1500"}


@pytest.mark.parametrize(("mode", "reason"), [
    ("sleeping", "space_sleeping"),
    ("status:503", "space_starting"),
    ("hang", "timeout"),
    ("refused", "unavailable"),
])
def test_llm_falls_back_to_worker_and_wakes_once(make_main, fast_env, worker: FakeBackend,
                                                 space: FakeBackend, hub: FakeHub, mode, reason):
    """GIVEN a Space that is asleep/starting/hung/refusing WHEN `llm` requests arrive
    THEN the worker answers within the deadline, the fallback names the reason,
    and exactly one wake request reaches the Hub."""
    if mode == "refused":
        fast_env = {**fast_env, "SPACE_URL": refused_url()}
    else:
        space.mode = mode
    main = make_main(fast_env)

    started = time.monotonic()
    result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    elapsed_ms = (time.monotonic() - started) * 1000

    assert result["statusCode"] == 200
    assert result["headers"]["x-chat-backend"] == "worker"
    assert result["headers"]["x-chat-fallback"] == reason
    assert json.loads(result["body"])["choices"][0]["message"]["content"].startswith("worker:")
    assert elapsed_ms < DEADLINE_MS + 100
    assert hub.restarted.wait(5), "no wake request reached the Hub"

    # A second request inside the wake cool-down sends no second wake.
    second = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    assert second["headers"]["x-chat-backend"] == "worker"
    assert hub.restarts == 1
    assert worker.generation_requests() == 2


def test_running_space_is_not_restarted(make_main, fast_env, space: FakeBackend, hub: FakeHub):
    """GIVEN a Space that 503s while the Hub says RUNNING WHEN falling back
    THEN the wake path reads the stage and does not restart a running Space."""
    hub.stage = "RUNNING"
    space.mode = "status:503"
    main = make_main(fast_env)
    result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    assert result["headers"]["x-chat-fallback"] == "space_starting"
    # The wake thread has been joined (within WAKE_GRACE_MS) before the answer left.
    assert ("GET", "/api/spaces/acme/chat-llm/runtime") in hub.calls
    assert hub.restarts == 0


def test_both_down_is_503_with_retry_after(make_main, fast_env, worker: FakeBackend,
                                           space: FakeBackend):
    """GIVEN both backends failing WHEN an `llm` request arrives
    THEN a 503 JSON error with Retry-After, inside the deadline."""
    space.mode = "sleeping"
    worker.mode = "status:500"
    main = make_main(fast_env)
    started = time.monotonic()
    result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    assert (time.monotonic() - started) * 1000 < DEADLINE_MS + 100
    assert result["statusCode"] == 503
    assert int(result["headers"]["retry-after"]) >= 1
    assert json.loads(result["body"])["error"]["code"] == "no_backend"


def test_both_hanging_is_504_at_the_deadline(make_main, fast_env, worker: FakeBackend,
                                             space: FakeBackend):
    """GIVEN both backends hanging WHEN a request arrives THEN 504 at the deadline, not later."""
    space.mode = worker.mode = "hang"
    main = make_main(fast_env)
    started = time.monotonic()
    result = main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
    elapsed_ms = (time.monotonic() - started) * 1000
    assert result["statusCode"] == 504
    assert json.loads(result["body"])["error"]["code"] == "deadline_exceeded"
    assert DEADLINE_MS - 200 < elapsed_ms < DEADLINE_MS + 100


def test_platform_time_and_header_shorten_the_deadline(make_main, fast_env,
                                                       worker: FakeBackend, space: FakeBackend):
    """GIVEN little platform time, or a caller's shorter deadline header WHEN all hang
    THEN the answer comes by the shorter deadline (never below the floor)."""
    space.mode = worker.mode = "hang"
    main = make_main(fast_env)
    started = time.monotonic()
    main(load_event("chat_completions_llm"), FunctionContext.with_timeout(1_700))
    assert (time.monotonic() - started) * 1000 < 1_700 - 500 + 100
    started = time.monotonic()
    event = load_event("chat_completions_llm", headers={"x-chat-deadline-ms": "10"})
    result = main(event, FunctionContext.with_timeout(28_000))
    assert result["statusCode"] == 504
    assert 900 < (time.monotonic() - started) * 1000 < 1_100  # MIN_DEADLINE_MS is 1000


def test_breaker_skips_a_failing_space(make_main, fast_env, worker: FakeBackend,
                                       space: FakeBackend):
    """GIVEN a Space that keeps failing WHEN more requests come THEN after 3 failures the Space
    is skipped (`circuit_open`) without being called."""
    space.mode = "status:500"
    main = make_main({**fast_env, "BREAKER_FAILURES": "3", "BREAKER_COOLDOWN_S": "60"})
    reasons = [main(load_event("chat_completions_llm"), FunctionContext.with_timeout(28_000))
               ["headers"]["x-chat-fallback"] for _ in range(5)]
    assert reasons == ["unavailable"] * 3 + ["circuit_open"] * 2
    assert space.generation_requests() == 6  # each 500 is sent again once


def test_a_woken_space_is_probed_soon(make_main, fast_env, worker: FakeBackend,
                                      space: FakeBackend):
    """GIVEN a sleeping Space that opened its circuit WHEN it wakes THEN the circuit's probe
    comes after SPACE_PROBE_S, not BREAKER_COOLDOWN_S, and the Space answers again."""
    space.mode = "sleeping"
    main = make_main({**fast_env, "BREAKER_FAILURES": "2", "BREAKER_COOLDOWN_S": "600",
                      "SPACE_PROBE_S": "0.2"})
    ctx = FunctionContext.with_timeout
    reasons = [main(load_event("chat_completions_llm"), ctx(28_000))["headers"]
               ["x-chat-fallback"] for _ in range(3)]
    assert reasons == ["space_sleeping", "space_sleeping", "circuit_open"]
    space.mode = "ok"
    engine = main.__globals__["FUNCTION"].router().engine
    assert engine.breakers["space"].retry_after_s() <= 0.2
    # Wait on the breaker's own clock, with a deadline, for the probe slot to open.
    deadline = time.monotonic() + 5
    while engine.breakers["space"].state == "open" and time.monotonic() < deadline:
        space.released.wait(0.01)
    result = main(load_event("chat_completions_llm"), ctx(28_000))
    assert result["headers"]["x-chat-backend"] == "space"
    assert "x-chat-fallback" not in result["headers"]


def test_worker_failure_falls_back_to_space(make_main, fast_env, worker: FakeBackend,
                                            space: FakeBackend):
    """GIVEN a dead worker WHEN a small request arrives THEN the Space answers it."""
    worker.mode = "status:500"
    main = make_main(fast_env)
    result = main(load_event("chat_completions"), FunctionContext.with_timeout(28_000))
    assert result["headers"]["x-chat-backend"] == "space"
    assert result["headers"]["x-chat-fallback"] == "unavailable"


def test_generation_is_not_resent_after_it_reached_the_backend(
        make_main, fast_env, worker: FakeBackend, space: FakeBackend):
    """GIVEN a worker that answers 504 (it may have run the request) WHEN a chat comes
    THEN it is not re-sent to the worker; embeddings (idempotent) are retried."""
    worker.mode = "status:504"
    main = make_main(fast_env)
    main(load_event("chat_completions"), FunctionContext.with_timeout(28_000))
    assert worker.generation_requests() == 1
    main(load_event("embeddings"), FunctionContext.with_timeout(28_000))
    assert sum(1 for s in worker.seen if s.path == "/v1/embeddings") == 3


def test_retry_after_that_fits_is_honoured(make_main, fast_env, worker: FakeBackend):
    """GIVEN a worker answering 429 with Retry-After WHEN the wait fits the budget
    THEN the request is retried (it never ran), up to RETRY_ATTEMPTS."""
    worker.mode = "status:429"
    worker.retry_after = "0"
    main = make_main({**fast_env, "SPACE_URL": ""})
    result = main(load_event("chat_completions"), FunctionContext.with_timeout(28_000))
    assert result["statusCode"] == 503
    assert result["headers"]["x-chat-fallback"] == "rate_limited"
    assert worker.generation_requests() == 3


def test_timeout_504_names_the_reason(make_main, fast_env, worker: FakeBackend,
                                      space: FakeBackend):
    """GIVEN both backends hanging WHEN the deadline passes THEN the 504 says why."""
    space.mode = worker.mode = "hang"
    result = make_main(fast_env)(load_event("chat_completions_llm"),
                                 FunctionContext.with_timeout(28_000))
    assert result["statusCode"] == 504
    assert result["headers"]["x-chat-fallback"] == "timeout"


def test_an_oversized_backend_answer_is_refused_while_reading(make_main, fast_env,
                                                              worker: FakeBackend,
                                                              space: FakeBackend):
    """GIVEN a worker that sends a 3 MB answer WHEN a chat comes THEN the router stops reading
    past 2 MB and falls back to the Space (reason `error`)."""
    worker.mode = "huge"
    worker.huge_bytes = 3 * 1024 * 1024
    result = make_main(fast_env)(load_event("chat_completions"),
                                 FunctionContext.with_timeout(28_000))
    assert result["headers"]["x-chat-backend"] == "space"
    assert result["headers"]["x-chat-fallback"] == "error"


class _BrokenTransport(httpx.AsyncBaseTransport):
    """A transport that fails the way no httpx error does (a bug below us)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("http://secret-backend.invalid exploded")


def test_an_unexpected_error_still_gets_json(fast_env):
    """GIVEN a failure no layer expects WHEN a request is handled THEN a JSON 500
    `internal_error`, with no detail of the failure in it."""
    from router import ChatRouter, Edge, HttpRequest, Settings

    router = ChatRouter(Settings.from_env({**fast_env, "SPACE_URL": ""}),
                        transports={"worker": _BrokenTransport()})
    try:
        response = router.handle(HttpRequest("POST", "/v1/chat/completions",
                                             {"content-type": "application/json"},
                                             b'{"messages":[{"role":"user","content":"x"}]}'),
                                 Edge())
    finally:
        router.close()
    assert response.status == 500
    assert json.loads(response.body)["error"]["code"] == "internal_error"
    assert "secret-backend" not in response.body


class _ArmedTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, except that, while armed, a request fails the way no httpx
    error does (a bug below the router, like httpx refusing to encode a body)."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport(retries=0)
        self.armed = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed:
            self.armed -= 1
            raise RuntimeError("a failure that is not the backend's")
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


@pytest.mark.parametrize("live", [False, True], ids=["collected", "live stream"])
def test_an_attempt_that_breaks_unexpectedly_gives_back_the_probe_slot(
        fast_env, worker: FakeBackend, space: FakeBackend, live: bool):
    """GIVEN a Space whose circuit is half open (it failed once, BREAKER_FAILURES=1, and its
    cool-down passed) WHEN the request that takes the probe slot breaks with an error that is no
    BackendError (500 `internal_error`) THEN the slot goes back with no verdict: the next `llm`
    request probes the Space and is answered by it, not skipped with `circuit_open` for a whole
    cool-down. Collected (the function) and streamed live (the service's edge) alike."""
    from router import ChatRouter, Edge, HttpRequest, Settings

    transport = _ArmedTransport()
    router = ChatRouter(Settings.from_env({**fast_env, "BREAKER_FAILURES": "1",
                                           "BREAKER_COOLDOWN_S": "0.2"}),
                        transports={"space": transport})
    body = {"model": "llm", "stream": live, "messages": [{"role": "user", "content": "x"}]}
    request = HttpRequest("POST", "/v1/chat/completions", {"content-type": "application/json"},
                          json.dumps(body).encode())

    async def ask() -> dict[str, str] | int:
        response = await router.handle_async(request, Edge(live_streams=live))
        if response.stream is not None:
            async for _ in response.stream:
                pass
        return response.headers if response.status == 200 else response.status

    try:
        space.mode = "status:503"
        opened = router.loop.run(ask())
        assert isinstance(opened, dict) and opened["x-chat-fallback"] == "space_starting"
        space.mode = "ok"
        breaker = router.engine.breakers["space"]
        end = time.monotonic() + 5  # the breaker's own clock: wait for its cool-down to end
        while breaker.state == "open" and time.monotonic() < end:
            space.released.wait(0.01)
        assert breaker.state == "half_open"
        transport.armed = 1
        assert router.loop.run(ask()) == 500
        probed = router.loop.run(ask())
        assert isinstance(probed, dict)
        assert probed["x-chat-backend"] == "space" and "x-chat-fallback" not in probed
        assert router.engine.breaker_states()["space"] == "closed"
    finally:
        router.close()
