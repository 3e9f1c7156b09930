"""A scheduled warm-up run wakes a sleeping Space; then `llm` requests are served by it again.
Also the off-hours rule in `ask`: outside the window, fall back to the worker or wake on demand.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from router._do_event import FunctionContext
from tests.conftest import load_event
from tests.fakes.hub import FakeHub
from tests.fakes.lifecycle import SpaceLifecycle
from tests.fakes.openai_backend import FakeBackend
from tests.router.warmup.conftest import closed_now, open_now, scheduled_event


def ask_llm(main: Any) -> dict[str, Any]:
    """One `llm` chat request through the real `ask` entry."""
    result: dict[str, Any] = main(load_event("chat_completions_llm"),
                                  FunctionContext.with_timeout(28_000))
    return result


def test_scheduled_run_wakes_the_space_then_llm_is_served_by_it(
        make_main, make_warmup, env, worker: FakeBackend, space: FakeBackend, hub: FakeHub,
        lifecycle: SpaceLifecycle):
    """GIVEN a sleeping Space whose edge shows the sleeping page, inside the window
    WHEN the scheduled trigger runs the warmup function
    THEN it restarts the Space; while it starts (503) `llm` falls back to the worker without a
    second restart; once it runs, `llm` is answered by the Space with no fallback."""
    env = {**env, "WARM_SCHEDULE": open_now(), "ASK_URL": ""}
    warmup = make_warmup(env)
    ask = make_main(env)

    started = time.monotonic()
    report = warmup(scheduled_event(), FunctionContext.with_timeout(60_000))
    run_ms = (time.monotonic() - started) * 1000
    assert report["source"] == "schedule"
    assert report["health"]["space"]["status"] == "sleeping"
    assert report["wake"] == "restarted" and report["actions"] == ["restart_space"]
    assert space.mode == "status:503"  # the edge now says "starting"
    assert run_ms < 5_000

    starting = ask_llm(ask)
    assert starting["headers"]["x-chat-backend"] == "worker"
    assert starting["headers"]["x-chat-fallback"] == "space_starting"
    assert hub.restarts == 1  # ask's own wake path read APP_STARTING and left it

    assert lifecycle.ready.wait(10), "the fake Space never finished starting"
    served = ask_llm(ask)
    assert served["statusCode"] == 200
    assert served["headers"]["x-chat-backend"] == "space"
    assert "x-chat-fallback" not in served["headers"]
    assert json.loads(served["body"])["choices"][0]["message"]["content"].startswith("space:")

    # The next scheduled run finds it running and does nothing.
    again = warmup(scheduled_event(), FunctionContext.with_timeout(60_000))
    assert (again["wake"], again["actions"], again["health"]["space"]["status"]) == \
        ("running", [], "ok")
    assert logging.getLogger("httpx2").level == logging.WARNING


def test_warmup_keeps_ask_warm_with_the_marker(make_main, make_warmup, env, worker: FakeBackend,
                                               space: FakeBackend, hub: FakeHub):
    """GIVEN ASK_URL pointing at the `ask` function (served on loopback by the service)
    WHEN the warmup runs THEN `ask` answers the marker at once and no backend sees a request."""
    from tests.support.service import serve_main

    hub.stage = "RUNNING"
    gateway = serve_main(make_main(env), namespace="ns", timeout_ms=28_000, host="127.0.0.1",
                         port=0)
    try:
        seen_before = len(worker.seen) + len(space.seen)
        report = make_warmup({**env, "ASK_URL": gateway.function_url})(scheduled_event(), None)
    finally:
        gateway.stop()
    assert report["health"]["ask"]["status"] == "ok"
    assert "warm_ask" in report["actions"]
    # Only the warmup's own /health pings reached the backends: ask touched none.
    assert len(worker.seen) + len(space.seen) == seen_before + 2


def test_off_hours_fallback_leaves_the_space_alone(make_main, env, worker: FakeBackend,
                                                   space: FakeBackend, hub: FakeHub):
    """GIVEN OFF_HOURS=fallback and a window that is closed now
    WHEN an `llm` request arrives THEN the worker answers (X-Chat-Fallback: off_hours), the
    Space is not called and not woken."""
    ask = make_main({**env, "WARM_SCHEDULE": closed_now(), "OFF_HOURS": "fallback"})
    result = ask_llm(ask)
    assert result["statusCode"] == 200
    assert result["headers"]["x-chat-backend"] == "worker"
    assert result["headers"]["x-chat-fallback"] == "off_hours"
    assert space.generation_requests() == 0
    assert hub.calls == []
    small = ask(load_event("chat_completions"), FunctionContext.with_timeout(28_000))
    assert small["headers"]["x-chat-backend"] == "worker"
    assert "x-chat-fallback" not in small["headers"]


def test_off_hours_wake_wakes_on_demand(make_main, env, worker: FakeBackend, space: FakeBackend,
                                        hub: FakeHub):
    """GIVEN OFF_HOURS=wake, a closed window and a sleeping Space
    WHEN an `llm` request arrives THEN it falls back to the worker at once and the Space is
    asked to wake (the router's rate-limited wake path)."""
    space.mode = "sleeping"
    ask = make_main({**env, "WARM_SCHEDULE": closed_now(), "OFF_HOURS": "wake"})
    result = ask_llm(ask)
    assert result["headers"]["x-chat-backend"] == "worker"
    assert result["headers"]["x-chat-fallback"] == "space_sleeping"
    assert hub.restarted.wait(5)
    assert hub.restarts == 1


def test_inside_the_window_llm_goes_to_the_space(make_main, env, space: FakeBackend):
    """GIVEN OFF_HOURS=fallback and an open window WHEN an `llm` request arrives
    THEN the Space answers it, as without a schedule."""
    ask = make_main({**env, "WARM_SCHEDULE": open_now(), "OFF_HOURS": "fallback"})
    assert ask_llm(ask)["headers"]["x-chat-backend"] == "space"


def test_misconfigured_schedule_is_a_clean_error(make_main, make_warmup, env):
    """GIVEN a WARM_SCHEDULE that does not parse WHEN either function is called
    THEN `ask` answers 503 misconfigured and the warmup returns a report saying so."""
    bad = {**env, "WARM_SCHEDULE": "Mon-Fri 8-20 Mars/Olympus"}
    result = ask_llm(make_main(bad))
    assert result["statusCode"] == 503
    assert json.loads(result["body"])["error"]["code"] == "misconfigured"
    report = make_warmup(bad)(scheduled_event(), None)
    assert report["ok"] is False and report["error"]["code"] == "misconfigured"
