"""Issue 11, defects 4 and 9: every setting is checked by the settings model, a bad one is a
clean 503 `misconfigured` in both functions, and `none` means unset for optional settings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router._config import Settings
from router._do_event import FunctionContext
from router._errors import ConfigError
from tests.conftest import load_event
from tests.router.warmup.conftest import scheduled_event

# (variable, a bad value that must never be echoed)
BAD_SETTINGS = [
    ("LOG_LEVEL", "LOUD"),
    ("WARM_SCHEDULE", "Mon-Fri 8-20 Mars/Olympus"),
    ("MODEL_ALIASES", "gpt-x=gpu-secretish"),
    ("SPACE_ID", "not a repo id"),
    ("ASK_URL", "ftp://ask-secretish"),
    ("OFF_HOURS", "sometimes"),
    ("SPACE_SLEEP_TIME_S", "-7"),
    ("ROUTE_DEFAULT", "large"),
    # Found by the settings fuzz: a lone surrogate (an undecodable byte in the environment)
    # passed as a model name and crashed every request when the body was encoded.
    ("WORKER_MODEL", "small\udc80"),
    ("SPACE_MODEL", "llm\udcff"),
    # Found by the full-size settings fuzz: a timeout past what a socket takes raised
    # OverflowError in the warmup's HTTP client (and leaked its socket).
    ("WARMUP_TIMEOUT_MS", str(2**70)),
    ("CONNECT_TIMEOUT_MS", str(2**62)),
    # Issue 26: a deployment's entry is checked at start-up, and named, never echoed.
    ("LLM_DEPLOYMENTS", "ep kind=endpiont url=https://secretish.example"),
    ("SMALL_DEPLOYMENTS", "w2 kind=openai url=https://secretish.example token=NOT_SET_X"),
    ("HF_ENDPOINTS_API", "ftp://endpoints-secretish"),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=[n for n, _ in BAD_SETTINGS])
def test_a_bad_setting_is_a_503_naming_it_in_both_functions(
        make_main: Any, make_warmup: Any, env: dict[str, str], name: str, value: str) -> None:
    """GIVEN one invalid setting (e.g. LOG_LEVEL=LOUD)
    WHEN `ask` serves a request and the warmup runs
    THEN `ask` answers the documented 503 misconfigured JSON and the warmup reports the same
    error; both name the variable, neither carries its value."""
    bad = {**env, name: value}
    result = make_main(bad)(load_event("chat_completions"), FunctionContext.with_timeout(28_000))
    assert result["statusCode"] == 503
    assert result["headers"]["content-type"] == "application/json"
    error = json.loads(result["body"])["error"]
    assert error["code"] == "misconfigured" and error["type"] == "service_unavailable"
    assert name in error["message"] and value not in result["body"]

    report = make_warmup(bad)(scheduled_event(), None)
    assert report["ok"] is False and report["status"] == 503
    assert report["error"]["code"] == "misconfigured"
    assert report["error"]["type"] == "service_unavailable"
    assert name in report["error"]["message"] and value not in json.dumps(report)


def test_the_settings_model_itself_refuses_a_bad_log_level() -> None:
    """GIVEN LOG_LEVEL=LOUD WHEN the settings are built THEN ConfigError names LOG_LEVEL;
    a valid level in any case is accepted and normalised."""
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        Settings.from_env({"WORKER_URL": "http://w", "LOG_LEVEL": "LOUD"})
    assert Settings.from_env({"WORKER_URL": "http://w", "LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize("none", ["none", "None", "NONE", " none "])
def test_none_means_unset_for_every_optional_setting(none: str) -> None:
    """GIVEN `none` (any case) for every optional setting WHEN the settings are built
    THEN each takes its default, as if the variable were not set at all."""
    optional = [n for n, f in Settings.model_fields.items() if not f.is_required()]
    settings = Settings.from_env({"WORKER_URL": "http://w", **{n.upper(): none for n in optional}})
    assert settings == Settings.from_env({"WORKER_URL": "http://w"})
    assert settings.cors_origins == () and settings.space_sleep_time_s is None
    assert not settings.has_space and settings.log_level == "INFO"


def test_none_is_not_a_value_for_a_required_setting() -> None:
    """GIVEN WORKER_URL=none WHEN the settings are built THEN it counts as missing."""
    with pytest.raises(ConfigError, match="WORKER_URL"):
        Settings.from_env({"WORKER_URL": "none"})
