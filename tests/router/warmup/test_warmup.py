"""The warm-up run against a fake Hub on loopback, through huggingface_hub's real HfApi."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from router._config import Settings
from router._warmup import Warmup, classify
from router_tools.space_ops import HubOps
from tests.conftest import HF_TOKEN, SECRETS, SPACE_ID
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend
from tests.router.warmup.conftest import BERLIN_WEEKDAYS, MONDAY_10_BERLIN, SATURDAY_10_BERLIN

RUNTIME = f"/api/spaces/{SPACE_ID}/runtime"
RESTART = f"/api/spaces/{SPACE_ID}/restart"


@pytest.fixture
def make_run(env: dict[str, str], hub: FakeHub) -> Iterator[object]:
    """Build a Warmup over HfApi for `env` + overrides, at a fixed instant."""
    built: list[Warmup] = []

    def make(at=MONDAY_10_BERLIN, **overrides: str) -> Warmup:
        settings = Settings.from_env({**env, "WARM_SCHEDULE": BERLIN_WEEKDAYS, **overrides})
        warmup = Warmup(settings, hub=HubOps(hub.url, settings.hf_token, timeout_s=5.0),
                        clock=lambda: at)
        built.append(warmup)
        return warmup

    yield make
    for warmup in built:
        warmup.close()


def test_inside_the_window_a_sleeping_space_is_restarted(make_run, hub: FakeHub,
                                                         space: FakeBackend):
    """GIVEN a sleeping Space (sleeping page at its edge) and Monday 10:00 in Berlin
    WHEN the warm-up runs THEN it pings both backends, reads SLEEPING from the Hub, restarts the
    Space once through HfApi, and reports stages, latencies and the action."""
    space.mode = "sleeping"
    report = make_run().run("schedule")

    assert report["ok"] is True
    assert report["window"] == {"schedule": BERLIN_WEEKDAYS, "open": True,
                                "off_hours": "fallback"}
    assert report["health"]["worker"]["status"] == "ok"
    assert report["health"]["space"]["status"] == "sleeping"
    assert report["space"]["stage"] == "SLEEPING"
    assert report["space"]["stage_after"] == "APP_STARTING"
    assert report["wake"] == "restarted"
    assert report["actions"] == ["restart_space"]
    assert hub.restarts == 1
    assert report["latency_ms"] > 0 and report["space"]["latency_ms"] > 0
    assert hub.calls.count(("POST", RESTART)) == 1


@pytest.mark.parametrize("stage", ["STOPPED", "PAUSED", "RUNTIME_ERROR"])
def test_stopped_or_paused_spaces_are_restarted_too(make_run, hub: FakeHub, stage: str):
    """GIVEN a Space that is stopped, paused or crashed WHEN a run falls in the window
    THEN it is restarted."""
    hub.stage = stage
    report = make_run().run()
    assert report["wake"] == "restarted"
    assert hub.restarts == 1


@pytest.mark.parametrize(("stage", "wake"), [("RUNNING", "running"),
                                             ("APP_STARTING", "starting"),
                                             ("BUILDING", "starting")])
def test_running_or_starting_space_is_left_alone(make_run, hub: FakeHub, stage: str, wake: str):
    """GIVEN a Space that runs or is already starting WHEN a run falls in the window
    THEN no restart (it would only start it over)."""
    hub.stage = stage
    report = make_run().run()
    assert report["wake"] == wake
    assert report["actions"] == []
    assert hub.restarts == 0


def test_broken_space_is_reported_not_restarted(make_run, hub: FakeHub):
    """GIVEN a Space whose build failed WHEN a run falls in the window
    THEN it is not restarted, and the report is not ok."""
    hub.stage = "BUILD_ERROR"
    report = make_run().run()
    assert (report["ok"], report["wake"], hub.restarts) == (False, "broken", 0)


def test_outside_the_window_no_wake(make_run, hub: FakeHub, space: FakeBackend):
    """GIVEN a sleeping Space on a Saturday WHEN the warm-up runs
    THEN outside the window: no wake, the stage is only read, and the Space's edge gets no
    request (a ping would count as activity and keep it awake)."""
    report = make_run(at=SATURDAY_10_BERLIN).run("schedule")
    assert report["health"]["space"] == {"status": "skipped", "reason": "outside_window"}
    assert space.seen == []
    assert report["window"]["open"] is False
    assert report["wake"] == "outside_window"
    assert report["actions"] == []
    assert hub.restarts == 0
    assert ("POST", RESTART) not in hub.calls
    assert report["ok"] is True


def test_outside_the_window_the_sleep_time_is_applied(make_run, hub: FakeHub):
    """GIVEN SPACE_SLEEP_TIME_S=600 and a Space that never sleeps WHEN a run falls outside the
    window THEN set_space_sleep_time sends {"seconds": 600}; a second run changes nothing."""
    hub.stage, hub.sleep_time = "RUNNING", -1
    warmup = make_run(at=SATURDAY_10_BERLIN, SPACE_SLEEP_TIME_S="600")
    report = warmup.run()
    assert report["actions"] == ["set_space_sleep_time"]
    assert report["space"]["sleep_time_s"] == 600
    assert ("sleeptime", {"seconds": 600}) in hub.bodies
    assert hub.sleep_time == 600
    assert warmup.run()["actions"] == []
    assert hub.restarts == 0


def test_unset_schedule_means_always(make_run, hub: FakeHub):
    """GIVEN no WARM_SCHEDULE WHEN a run happens on a Saturday THEN the window is open."""
    report = make_run(at=SATURDAY_10_BERLIN, WARM_SCHEDULE="").run()
    assert report["window"]["schedule"] == "always"
    assert report["wake"] == "restarted"


@pytest.mark.parametrize(("status", "reason"), [(401, "unauthorized"), (404, "not_found"),
                                                (429, "rate_limited"), (500, "error")])
def test_hub_failures_are_reported_without_a_wake(make_run, hub: FakeHub, status: int,
                                                  reason: str):
    """GIVEN a Hub that answers 401/404/429/500 WHEN the warm-up runs
    THEN the report names the failure, takes no action, and is not ok."""
    hub.fail_status = status
    report = make_run().run()
    assert report["space"]["error"] == reason
    assert report["space"]["hub_status"] == status
    assert report["wake"] == "hub_error"
    assert report["actions"] == []
    assert report["ok"] is False
    assert hub.restarts == 0


def test_wrong_token_and_unknown_space(make_run, hub: FakeHub):
    """GIVEN a wrong HF_TOKEN, or a SPACE_ID the Hub does not know WHEN the warm-up runs
    THEN 401 and 404 come back from the Hub itself, never a restart."""
    report = make_run(HF_TOKEN="hf_wrongWrongWrong").run()
    assert (report["space"]["error"], report["space"]["hub_status"]) == ("unauthorized", 401)
    report = make_run(SPACE_ID="acme/other").run()
    assert (report["space"]["error"], report["space"]["hub_status"]) == ("not_found", 404)
    assert hub.restarts == 0


def test_unreachable_hub_and_backends(make_run, env: dict[str, str]):
    """GIVEN nothing listening at the worker, the Space or the Hub WHEN the warm-up runs
    THEN each is reported unreachable, quickly, and the run still returns a report."""
    dead = "http://127.0.0.1:9"
    warmup = make_run(WORKER_URL=dead, SPACE_URL=dead)
    warmup.hub = HubOps(dead, HF_TOKEN, timeout_s=2.0)
    report = warmup.run()
    assert report["health"]["worker"]["status"] == "unreachable"
    assert report["health"]["space"]["status"] == "unreachable"
    assert report["space"]["error"] == "unreachable"
    assert report["ok"] is False


def test_no_space_configured(make_run):
    """GIVEN no SPACE_URL and no SPACE_ID WHEN the warm-up runs
    THEN it pings the worker only and says the Space is not configured."""
    warmup = make_run(SPACE_URL="", SPACE_ID="")
    warmup.hub = None
    report = warmup.run()
    assert report["health"]["space"] == {"status": "not_configured"}
    assert report["wake"] == "not_configured"
    assert report["ok"] is True


def test_report_and_logs_hold_no_secret_or_url(make_run, env: dict[str, str],
                                               caplog: pytest.LogCaptureFixture):
    """GIVEN tokens and URLs in the settings WHEN a run restarts the Space
    THEN neither the report nor any log line contains a token or a backend URL."""
    with caplog.at_level(logging.DEBUG):
        report = make_run().run()
    # Our own loggers (the entry also quiets httpx2, which logs request URLs at INFO).
    text = json.dumps(report) + "\n".join(r.getMessage() + str(getattr(r, "fields", ""))
                                          for r in caplog.records if r.name.startswith("router"))
    for value in (*SECRETS, env["WORKER_URL"], env["SPACE_URL"], env["HF_ENDPOINT"]):
        assert value not in text


@pytest.mark.parametrize(("status", "ctype", "body", "expected"), [
    (200, "application/json", b'{"status":"ready"}', "ok"),
    (200, "text/html", b"<html>This Space is sleeping due to inactivity</html>", "sleeping"),
    (200, "text/html", b"<html>Preparing Space</html>", "starting"),
    (503, "application/json", b"{}", "starting"),
    (504, "text/plain", b"", "starting"),
    (401, "application/json", b"{}", "unauthorized"),
    (500, "application/json", b"{}", "error"),
    (200, "text/plain", b"hello", "error"),
])
def test_classify_health_answers(status, ctype, body, expected):
    """GIVEN each kind of /health answer DESIGN §2 records WHEN classified
    THEN HTML and 502/503/504 are never taken for a ready model."""
    response = httpx.Response(status, headers={"content-type": ctype}, content=body)
    assert classify(response) == expected
