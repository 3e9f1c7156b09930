"""Keep-warm windows (`WARM_SCHEDULE`) and the off-hours rule (cron lives in router_tools/cron.py).

A schedule is one or more rules separated by `;`, each `DAYS HH:MM-HH:MM [Area/City]`:

    Mon-Fri 08:00-20:00 Europe/Berlin
    Mon-Fri 08:00-20:00; Sat 10:00-14:00 Europe/Berlin

DAYS is a day (`Mon`), a range (`Mon-Fri`, `Fri-Mon`), a list (`Mon,Wed,Fri`), or `daily`.
A window may run past midnight (`22:00-02:00` belongs to the day it starts on); `24:00` ends a
day. A rule without a time zone takes the zone of the next rule that names one, else UTC.
An empty schedule means "always". Only stdlib (`zoneinfo`, fed by the tzdata wheel) is used:
this module sits on the `ask` function's import path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from router._errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Rule:
    """One window: weekdays (0 = Monday), start and end in minutes after local midnight."""

    days: frozenset[int]
    start: int
    end: int
    zone: str

    def spans(self) -> list[tuple[int, int, int]]:
        """(weekday, start, end) pieces within single days, splitting at midnight."""
        out: list[tuple[int, int, int]] = []
        for day in sorted(self.days):
            if self.end > self.start:
                out.append((day, self.start, self.end))
            else:  # past midnight, or a full day when start == end
                out.append((day, self.start, MINUTES_PER_DAY))
                if self.end:
                    out.append(((day + 1) % 7, 0, self.end))
        return out


def _day(name: str) -> int:
    key = name.strip().lower()[:3]
    if key not in DAYS:
        raise ConfigError(f"WARM_SCHEDULE: unknown day {name.strip()[:12]!r}")
    return DAYS.index(key)


def _days(text: str) -> frozenset[int]:
    if text.lower() in ("daily", "*", "mon-sun"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.partition("-")
        if not sep:
            days.add(_day(first))
            continue
        start, end = _day(first), _day(last)
        days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
    return frozenset(days)


def _minutes(text: str) -> int:
    hours, sep, minutes = text.strip().partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ConfigError(f"WARM_SCHEDULE: expected HH:MM, got {text.strip()[:12]!r}")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > MINUTES_PER_DAY:
        raise ConfigError(f"WARM_SCHEDULE: no such time {text.strip()[:12]!r}")
    return value


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"WARM_SCHEDULE: unknown time zone {name[:40]!r}") from None
    return name


@dataclass(frozen=True, slots=True)
class Schedule:
    """The keep-warm windows; no rules means always open."""

    rules: tuple[Rule, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse WARM_SCHEDULE; raise ConfigError naming the part that is wrong."""
        parsed: list[tuple[frozenset[int], int, int, str | None]] = []
        for chunk in (c.strip() for c in text.split(";")):
            if not chunk:
                continue
            words = chunk.split()
            if len(words) not in (2, 3):
                raise ConfigError("WARM_SCHEDULE: each rule is `DAYS HH:MM-HH:MM [Area/City]`")
            first, sep, last = words[1].partition("-")
            if not sep:
                raise ConfigError("WARM_SCHEDULE: a window is HH:MM-HH:MM")
            zone = _zone(words[2]) if len(words) == 3 else None
            parsed.append((_days(words[0]), _minutes(first), _minutes(last), zone))
        rules: list[Rule] = []
        zone_after = "UTC"
        for days, start, end, zone in reversed(parsed):
            zone_after = zone or zone_after
            rules.append(Rule(days, start, end, zone_after))
        return cls(tuple(reversed(rules)), text.strip())

    @property
    def always(self) -> bool:
        """Whether the schedule is unset (always open)."""
        return not self.rules

    def is_open(self, now: datetime) -> bool:
        """Whether `now` (an aware datetime) falls inside a window."""
        if self.always:
            return True
        for rule in self.rules:
            local = now.astimezone(ZoneInfo(rule.zone))
            minute = local.hour * 60 + local.minute
            if any(day == local.weekday() and start <= minute < end
                   for day, start, end in rule.spans()):
                return True
        return False

    def _week(self) -> list[bool]:
        week = [False] * (7 * MINUTES_PER_DAY)
        for rule in self.rules:
            for day, start, end in rule.spans():
                base = day * MINUTES_PER_DAY
                week[base + start:base + end] = [True] * (end - start)
        return week

    def hours_per_week(self) -> float:
        """Open hours in a week of local wall-clock time (overlaps counted once)."""
        return 168.0 if self.always else sum(self._week()) / 60.0

    def closings_per_week(self) -> int:
        """How often a window closes in a week (each close starts a Space's sleep timer)."""
        if self.always:
            return 0
        week = self._week()
        return sum(1 for i, open_ in enumerate(week) if open_ and not week[(i + 1) % len(week)])


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.fromtimestamp(time.time(), UTC)


class SpaceHours:
    """The off-hours rule: may requests use the Space now? Per container, parsed once."""

    def __init__(self, warm_schedule: str, off_hours: str,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.schedule = Schedule.parse(warm_schedule)
        self.off_hours = off_hours
        self._clock = clock

    def space_allowed(self) -> bool:
        """False only outside the window with OFF_HOURS=fallback (then the worker answers)."""
        if self.off_hours == "wake" or self.schedule.always:
            return True
        return self.schedule.is_open(self._clock())
