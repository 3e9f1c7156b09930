"""Cron (issue 11, defect 8: Vixie cron's day rules, through a kept library) and project.yml's
trigger checked against the platform (DESIGN §2)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from router._errors import ConfigError
from router_tools.cron import Cron, check_triggers, project_triggers

ROOT = Path(__file__).resolve().parents[2]


def at(text: str) -> datetime:
    """An aware instant from ISO text."""
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(("cron", "instant", "fires"), [
    # `*/2` starts with `*`: day-of-month AND weekday (Vixie cron, croniter, cronsim).
    ("0 0 */2 * 1", "2025-01-13T00:00:00+00:00", True),    # Monday the 13th (odd day)
    ("0 0 */2 * 1", "2025-01-06T00:00:00+00:00", False),   # Monday the 6th (even day)
    ("0 0 */2 * 1", "2025-01-03T00:00:00+00:00", False),   # Friday the 3rd (odd day)
    ("0 0 * * 1", "2025-01-06T00:00:00+00:00", True),
    # Neither field starts with `*`: day-of-month OR weekday.
    ("0 0 13 * 5", "2025-01-10T00:00:00+00:00", True),
    ("0 0 13 * 5", "2025-01-13T00:00:00+00:00", True),
    ("0 0 13 * 5", "2025-01-14T00:00:00+00:00", False),
])
def test_day_of_month_and_weekday_follow_vixie_cron(cron: str, instant: str, fires: bool):
    """GIVEN a cron that restricts days WHEN asked about a minute THEN it fires as Vixie cron."""
    assert Cron.parse(cron).matches(at(instant)) is fires


def test_runs_between_counts_the_and_rule():
    """GIVEN `0 0 */2 * 1` WHEN its runs in January 2025 are counted THEN only the Mondays on odd
    days (13th and 27th) count, not every Monday plus every odd day."""
    start = at("2025-01-01T00:00:00+00:00")
    assert Cron.parse("0 0 */2 * 1").runs_between(start, start + timedelta(days=31)) == 2
    assert Cron.parse("*/5 * * * *").runs_between(start, start + timedelta(days=7)) == 2016


@pytest.mark.parametrize(("cron", "instant", "fires"), [
    ("*/5 * * * *", "2025-01-06T10:05:00+00:00", True),
    ("*/5 * * * *", "2025-01-06T10:06:00+00:00", False),
    ("0 8-20/4 * * mon-fri", "2025-01-06T12:00:00+00:00", True),
    ("0 8-20/4 * * mon-fri", "2025-01-11T12:00:00+00:00", False),
    ("30 6 1 jan *", "2025-01-01T06:30:00+00:00", True),
    ("0 0 * * 7", "2025-01-12T00:00:00+00:00", True),   # 7 is Sunday too
    ("0 0 13 * 5", "2025-01-10T00:00:00+00:00", True),  # day-of-month OR weekday (a Friday)
])
def test_cron_matches(cron: str, instant: str, fires: bool):
    """GIVEN a 5-field cron WHEN asked about a minute THEN it fires as Vixie cron would."""
    assert Cron.parse(cron).matches(at(instant)) is fires


@pytest.mark.parametrize("cron", ["* * * *", "*/5 * * * * *", "61 * * * *", "*/0 * * * *",
                                  "a * * * *"])
def test_bad_cron_is_refused(cron: str):
    """GIVEN a cron that is not 5 valid fields WHEN parsed THEN ConfigError."""
    with pytest.raises(ConfigError):
        Cron.parse(cron)


def test_project_yml_warmup_trigger_fits_the_platform():
    """GIVEN project.yml WHEN its triggers are checked against DESIGN §2
    THEN the warmup function is not web, has a timeout, and its scheduled trigger has five cron
    fields, a body that is an object, and stays within 3 triggers per namespace."""
    project = yaml.safe_load((ROOT / "project.yml").read_text())
    assert set(project) <= {"packages", "parameters", "environment", "targetNamespace"}
    assert check_triggers(project) == []
    triggers = project_triggers(project)
    assert 1 <= len(triggers) <= 3
    where, trigger = triggers[0]
    assert where == "chat/warmup"
    details = trigger["sourceDetails"]
    assert len(details["cron"].split()) == 5
    assert isinstance(details["withBody"], dict)
    (chat,) = [p for p in project["packages"] if p["name"] == "chat"]
    (warmup,) = [f for f in chat["functions"] if f["name"] == "warmup"]
    assert warmup["web"] is False and warmup["runtime"] == "python:3.11"
    assert 1_000 <= warmup["limits"]["timeout"] <= 900_000
    assert 128 <= warmup["limits"]["memory"] <= 1024
    env = {**chat.get("environment", {}), **warmup.get("environment", {})}
    assert all(isinstance(v, str) and v == f"${{{k}}}" for k, v in env.items())
    assert {"WARM_SCHEDULE", "OFF_HOURS", "ASK_URL", "SPACE_SLEEP_TIME_S", "SPACE_ID",
            "HF_TOKEN"} <= set(env)
    assert (ROOT / "packages/chat/warmup/build.sh").stat().st_mode & 0o111


def test_check_triggers_catches_what_the_platform_refuses():
    """GIVEN triggers with a 6-field cron, a list body, a wrong source, and one too many
    WHEN checked THEN each problem is named."""
    bad = {"sourceType": "scheduler", "sourceDetails": {"cron": "* * * * * *", "withBody": []}}
    good = {"sourceType": "scheduler", "sourceDetails": {"cron": "* * * * *"}}
    other = {"sourceType": "webhook", "sourceDetails": {"cron": "* * * * *"}}
    project = {"packages": [{"name": "p", "functions": [
        {"name": "f", "triggers": [bad, good, good, other]}]}]}
    problems = check_triggers(project)
    assert any("4 triggers" in p for p in problems)
    assert any("expected 5 fields" in p for p in problems)
    assert any("withBody must be an object" in p for p in problems)
    assert any("sourceType" in p for p in problems)
