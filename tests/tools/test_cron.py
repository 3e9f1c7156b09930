"""Issue 11, defect 8: 5-field cron with Vixie cron's day rules, through a kept library."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from router_tools.cron import Cron


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
