"""The fault matrix: every fault on each backend, through the real `main`, with real backoff.

GIVEN one backend failing in one way (tests/reliability/faults.py) and the other healthy, or
no fallback at all, WHEN a chat request comes, THEN:
- the answer (the other backend's, or the documented 502/503/504) comes by the deadline + 100 ms;
- its headers name the backend that answered and the reason (`X-Chat-Fallback`);
- the failing backend got the generation at most once, unless the model never ran it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router._do_event import FunctionContext
from router._retry import set_backoff
from tests.conftest import load_event
from tests.fakes.faults import FAULTS, Fault, ResetServer, refused_url
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import Ledger, Results

DEADLINE_MS = 2000
RESERVE_MS = 1000
RETRY_ATTEMPTS = 3
SLACK_MS = 100

# scenario: (the request, the failing backend, the backend that should answer instead)
SCENARIOS: dict[str, tuple[str, str, str | None]] = {
    "space fails, worker answers": ("chat_completions_llm", "space", "worker"),
    "worker fails, Space answers": ("chat_completions", "worker", "space"),
    "worker fails, no fallback": ("chat_completions", "worker", None),
}


@pytest.fixture(autouse=True)
def _real_backoff() -> Iterator[None]:
    # Jittered backoff and Retry-After waits are part of what must fit in the deadline.
    set_backoff(True)
    yield
    set_backoff(False)


@pytest.fixture
def reset_server() -> Iterator[ResetServer]:
    server = ResetServer("reset").start()
    yield server
    server.stop()


def _inject(fault: Fault, fake: FakeBackend, reset: ResetServer, share_ms: int) -> str:
    """Put `fake` (or a stand-in) into `fault`; return the URL the router must use."""
    if fault.mode == "refused":
        return refused_url()
    if fault.mode == "rst":
        return reset.url
    fake.mode = fault.mode
    fake.retry_after = fault.retry_after
    # The first byte comes 400 ms after this backend's share of the deadline.
    fake.delay_s = share_ms / 1000 + 0.4 if fault.mode == "slow" else fault.delay_s
    return fake.url


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault(scenario: str, fault: Fault, make_main: Callable[[dict[str, str]], Any],
               env: dict[str, str], worker: FakeBackend, space: FakeBackend, hub: FakeHub,
               reset_server: ResetServer, ledger: Ledger, results: Results) -> None:
    event_name, failing, fallback = SCENARIOS[scenario]
    fakes = {"worker": worker, "space": space}
    share_ms = DEADLINE_MS if fallback is None else RESERVE_MS
    url = _inject(fault, fakes[failing], reset_server, share_ms)
    run_env = {**env, "ROUTER_DEADLINE_MS": str(DEADLINE_MS),
               "FALLBACK_RESERVE_MS": str(RESERVE_MS), "RETRY_ATTEMPTS": str(RETRY_ATTEMPTS),
               f"{failing.upper()}_URL": url}
    if fallback is None:
        run_env["SPACE_URL"] = ""
    ledger.secret(url)
    main = make_main(run_env)

    started = time.monotonic()
    answer = main(load_event(event_name), FunctionContext.with_timeout(28_000))
    elapsed_ms = (time.monotonic() - started) * 1000
    ledger.answer(answer["statusCode"], answer["headers"], answer["body"])
    status, headers, body = answer["statusCode"], answer["headers"], json.loads(answer["body"])
    reason = fault.space_reason if failing == "space" else fault.worker_reason
    counted = reset_server if fault.mode == "rst" else fakes[failing]
    sends = counted.generation_requests()

    said = headers.get("x-chat-backend", "-") if status == 200 else body["error"]["code"]
    outcome = f"{status} {said} / {headers.get('x-chat-fallback', '-')}"
    results.add("faults", f"{scenario} | {fault.name}", {
        "outcome": outcome, "ms": round(elapsed_ms), "sends": sends})

    # THEN the answer comes in time...
    assert elapsed_ms <= DEADLINE_MS + SLACK_MS, elapsed_ms
    # ...from the other backend, or as the documented error...
    if fallback is not None:
        assert status == 200, body
        assert headers["x-chat-backend"] == fallback
        assert headers["x-chat-fallback"] == reason
        assert body["choices"][0]["message"]["content"].startswith(f"{fallback}:")
        assert fakes[fallback].generation_requests() == 1
    elif fault.mode == "huge":
        # The backend's answer, not the caller's request, was too large: 502, never 413.
        assert status == 502, body
        assert body["error"]["code"] == "response_too_large"
    elif reason == "timeout":
        assert status == 504, body
        assert body["error"]["code"] == "deadline_exceeded"
    else:
        assert status == 503, body
        assert body["error"]["code"] == "no_backend"
        assert headers["x-chat-fallback"] == reason
        assert int(headers["retry-after"]) >= 1
    assert set(body.get("error", {})) in (set(), {"type", "message", "code"})
    # ...and a generation that reached the model was not sent again.
    assert sends <= (RETRY_ATTEMPTS if fault.resend else 1), sends
