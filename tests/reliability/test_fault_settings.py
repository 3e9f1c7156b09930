"""A bad setting, in both functions: a fault row per setting, then hypothesis-drawn values.

GIVEN healthy backends and one setting set to a bad value (issue 11, defect 4: LOG_LEVEL=LOUD
used to raise out of `main`, a bare 502), WHEN `ask` serves a request and `warmup` runs,
THEN `ask` gives the documented 503 `misconfigured` JSON and `warmup` the same error in its
report, each naming the variable and never its value; a value the settings accept is served.
Neither function ever raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router._config import Settings
from router._do_event import FunctionContext, WebFunction
from router._warmup import WarmupFunction
from tests.conftest import SPACE_TOKEN, WORKER_TOKEN, load_event
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import FULL, Ledger, Results, served
from tests.reliability.strategies import WEIRD_TEXT

SETTINGS_CASES = 400 if FULL else 60
FUZZ = settings(max_examples=SETTINGS_CASES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
# Fields whose valid values reach past loopback (URLs) stay out of the value fuzz.
NETWORK = {"worker_url", "space_url", "hf_endpoint", "ask_url"}
FIELDS = sorted(name.upper() for name in Settings.model_fields if name not in NETWORK)
# One clearly bad value per kind of setting, for the fault rows.
BAD_ROWS = [
    ("LOG_LEVEL", "LOUD"), ("ROUTER_DEADLINE_MS", "soon-ish"), ("RETRY_ATTEMPTS", "99"),
    ("BREAKER_COOLDOWN_S", "-1"), ("OFF_HOURS", "sometimes"), ("ROUTE_DEFAULT", "large"),
    ("WARM_SCHEDULE", "Mon-Fri 8-20 Mars/Olympus"), ("MODEL_ALIASES", "x=gpu"),
    ("SPACE_ID", "no/such/repo"), ("ASK_URL", "ftp://ask.internal"),
    ("SPACE_SLEEP_TIME_S", "-9"), ("MAX_BODY_BYTES", "10"), ("CLIENT_TOKEN_MAX_TTL_S", "soon"),
    ("WORKER_URL", "worker.internal:8080"), ("WORKER_URL", "http://[::1"),
    ("WORKER_URL", "http://"), ("SPACE_URL", "http://space host"), ("SPACE_URL", "http://s:99999"),
    ("WORKER_TOKEN", "tok\u00e9n-with-accent"),
    # An undecodable byte in a deployments list (found by the fuzz below): the variable is named
    # like any other, though its own parser's messages are kept (issue 26).
    ("SMALL_DEPLOYMENTS", "w kind=worker url=http://a\udcff"), ("LLM_DEPLOYMENTS", "\udcff"),
]
# A deployment's entry (issue 26) is named in the message too: the variable, the entry (by
# its name, or its position when the name is bad) and what is wrong with it.
MISCONFIGURED = re.compile(r"invalid or missing settings: [A-Z_, ]+|"
                           r"(invalid or missing settings: [A-Z_, ]+; )?"
                           r"invalid settings: (SMALL|LLM)_DEPLOYMENTS: [^\n]+")


@pytest.fixture(scope="module")
def base_env() -> Iterator[dict[str, str]]:
    """Healthy worker and Space on loopback; the env that `ask` and `warmup` start from."""
    with served(FakeBackend("worker", token=WORKER_TOKEN)) as worker_url, \
            served(FakeBackend("space", token=SPACE_TOKEN)) as space_url:
        yield {"WORKER_URL": worker_url, "WORKER_TOKEN": WORKER_TOKEN, "SPACE_URL": space_url,
               "SPACE_TOKEN": SPACE_TOKEN, "ROUTER_DEADLINE_MS": "2000",
               "FALLBACK_RESERVE_MS": "1000"}


def _run_both(env: dict[str, str], ledger: Ledger) -> tuple[dict[str, Any], dict[str, Any]]:
    """A cold `ask` container serving one chat request, and a cold `warmup` run."""
    ask = WebFunction(env)
    warmup = WarmupFunction(env, hub_factory=lambda _settings: None)
    try:
        answer = ask(load_event("chat_completions"), FunctionContext.with_timeout(5_000))
        report = warmup({"source": "schedule"}, None)
    finally:
        ask.close()
        warmup.close()
    ledger.answer(answer["statusCode"], answer["headers"], answer["body"])
    ledger.answer(200, {}, json.dumps(report))
    return answer, report


def _check_misconfigured(answer: dict[str, Any], report: dict[str, Any], name: str,
                         value: str) -> None:
    assert answer["statusCode"] == 503, answer
    assert answer["headers"]["content-type"] == "application/json"
    error = json.loads(answer["body"])["error"]
    assert error["code"] == "misconfigured" and error["type"] == "service_unavailable"
    assert MISCONFIGURED.fullmatch(error["message"]) and name in error["message"]
    assert report["ok"] is False and report["status"] == 503
    assert report["error"] == error
    # The message is the fixed template (checked above), so a value can only show inside it
    # by coincidence ("con" in "misconfigured"); look for it in whatever else was said.
    # JSON's own words ("false") are not something said either: only the texts are searched.
    fixed = {error["message"], error["code"], error["type"]}
    said = [text for text in _texts([json.loads(answer["body"]), report]) if text not in fixed]
    if len(value.strip()) >= 3:
        assert not any(value.strip() in text for text in said)


def _texts(value: Any) -> Iterator[str]:
    """Every string value in a JSON value (keys are the schema's own words)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


@pytest.mark.parametrize(("name", "value"), BAD_ROWS, ids=[f"{n}={v!a}" for n, v in BAD_ROWS])
def test_bad_setting_row(base_env: dict[str, str], ledger: Ledger, results: Results,
                         name: str, value: str) -> None:
    """One fault row: this setting bad, everything else healthy (see the module docstring)."""
    answer, report = _run_both({**base_env, name: value}, ledger)
    _check_misconfigured(answer, report, name, value)
    results.bump("fault_settings", "rows")


def _accepts(env: dict[str, str]) -> bool:
    try:
        Settings.from_env(env)
    except Exception:
        return False
    return True


@given(name=st.sampled_from(FIELDS),
       value=st.one_of(WEIRD_TEXT, st.integers(-(2**70), 2**70).map(str),
                       st.sampled_from(["none", "NONE", "-1", "0", "1e9", "true", "*", ","])))
@FUZZ
def test_fuzz_one_setting(base_env: dict[str, str], ledger: Ledger, results: Results,
                          name: str, value: str) -> None:
    """GIVEN one setting drawn at random with a hostile value WHEN both functions start
    THEN either the settings accept it and `ask` answers with a documented status, or both
    give the misconfigured error naming it; never an exception, never the value echoed."""
    env = {**base_env, name: value}
    answer, report = _run_both(env, ledger)
    results.bump("fault_settings", "fuzz_cases")
    if _accepts(env):
        assert answer["statusCode"] in {200, 400, 401, 403, 413, 503, 504}, answer
        assert "ok" in report
        return
    _check_misconfigured(answer, report, name, value)
