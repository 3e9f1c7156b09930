"""WARM_SCHEDULE windows and the off-hours rule (DESIGN §2)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from router._config import Settings
from router._errors import ConfigError
from router._schedule import Schedule, SpaceHours

ROOT = Path(__file__).resolve().parents[3]


def at(text: str) -> datetime:
    """An aware instant from ISO text."""
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(("instant", "is_open"), [
    ("2025-01-06T07:59:00+01:00", False),  # Monday, one minute early (winter, CET)
    ("2025-01-06T08:00:00+01:00", True),
    ("2025-01-06T19:59:00+01:00", True),
    ("2025-01-06T20:00:00+01:00", False),  # the end is exclusive
    ("2025-01-06T07:30:00+00:00", True),   # 08:30 in Berlin, given in UTC
    ("2025-07-07T06:30:00+00:00", True),   # 08:30 in Berlin in summer (CEST, UTC+2)
    ("2025-07-07T18:30:00+00:00", False),  # 20:30 in Berlin in summer
    ("2025-01-11T12:00:00+01:00", False),  # Saturday
])
def test_weekday_window_in_berlin(instant: str, is_open: bool):
    """GIVEN `Mon-Fri 08:00-20:00 Europe/Berlin` WHEN asked about instants given in any zone
    THEN the answer follows Berlin's wall clock, daylight saving included."""
    assert Schedule.parse("Mon-Fri 08:00-20:00 Europe/Berlin").is_open(at(instant)) is is_open


def test_overnight_and_several_rules_share_a_trailing_zone():
    """GIVEN two rules, the last naming the zone, one running past midnight WHEN parsed
    THEN both use that zone, and the night window belongs to the day it starts on."""
    schedule = Schedule.parse("Fri-Sat 22:00-02:00; Sun 10:00-12:00 America/New_York")
    assert {rule.zone for rule in schedule.rules} == {"America/New_York"}
    assert schedule.is_open(at("2025-01-11T01:30:00-05:00"))   # Saturday 01:30 (Friday's night)
    assert schedule.is_open(at("2025-01-12T01:30:00-05:00"))   # Sunday 01:30 (Saturday's night)
    assert not schedule.is_open(at("2025-01-13T01:30:00-05:00"))  # Monday 01:30
    assert schedule.is_open(at("2025-01-12T11:00:00-05:00"))
    assert schedule.hours_per_week() == 10.0
    assert schedule.closings_per_week() == 3


@pytest.mark.parametrize(("text", "hours", "closings"), [
    ("", 168.0, 0),
    ("Mon-Fri 08:00-20:00 Europe/Berlin", 60.0, 5),
    ("daily 00:00-24:00", 168.0, 0),
    ("Mon,Wed,Fri 09:00-17:30", 25.5, 3),
    ("Mon-Fri 08:00-12:00; Mon-Fri 10:00-14:00 UTC", 30.0, 5),  # overlaps counted once
])
def test_hours_and_closings_per_week(text: str, hours: float, closings: int):
    """GIVEN a schedule WHEN its week is measured THEN open hours and closings are right."""
    schedule = Schedule.parse(text)
    assert (schedule.hours_per_week(), schedule.closings_per_week()) == (hours, closings)
    assert schedule.always is (text == "")


@pytest.mark.parametrize("text", [
    "Mon-Fri 8-20", "Someday 08:00-20:00", "Mon-Fri 08:00-20:00 Mars/Olympus",
    "Mon-Fri 08:00-25:00", "Mon-Fri 08:61-20:00", "Mon-Fri", "Mon 08:00-20:00 UTC extra",
])
def test_bad_schedules_name_the_problem(text: str):
    """GIVEN a malformed WARM_SCHEDULE WHEN parsed THEN ConfigError says what is wrong."""
    with pytest.raises(ConfigError, match="WARM_SCHEDULE"):
        Schedule.parse(text)


def test_space_hours_follow_off_hours_setting():
    """GIVEN a closed window WHEN OFF_HOURS is fallback THEN the Space is not used; with wake,
    or with no schedule, it is."""
    saturday = at("2025-01-11T12:00:00+00:00")
    base = {"WORKER_URL": "http://w", "WARM_SCHEDULE": "Mon-Fri 08:00-20:00 Europe/Berlin"}

    def hours(env: dict[str, str]) -> SpaceHours:
        settings = Settings.from_env(env)
        return SpaceHours(settings.warm_schedule, settings.off_hours, clock=lambda: saturday)

    assert hours(base).space_allowed() is False
    assert hours({**base, "OFF_HOURS": "wake"}).space_allowed() is True
    assert hours({"WORKER_URL": "http://w"}).space_allowed() is True
    with pytest.raises(ConfigError):
        Settings.from_env({**base, "OFF_HOURS": "sometimes"})
