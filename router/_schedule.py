"""Keep-warm windows (`WARM_SCHEDULE`), the off-hours rule, and 5-field cron for the triggers.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from router._config import Settings
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

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utc_now) -> None:
        self.schedule = Schedule.parse(settings.warm_schedule)
        self.off_hours = settings.off_hours
        self._clock = clock

    def space_allowed(self) -> bool:
        """False only outside the window with OFF_HOURS=fallback (then the worker answers)."""
        if self.off_hours == "wake" or self.schedule.always:
            return True
        return self.schedule.is_open(self._clock())


# --- 5-field cron, as DigitalOcean's scheduled triggers take it (evaluated in UTC) -----------

_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES: tuple[dict[str, int], ...] = ({}, {}, {},
               {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul",
                                                "aug", "sep", "oct", "nov", "dec"))},
               {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))})


def _cron_value(text: str, field: int) -> int:
    names: Mapping[str, int] = _CRON_NAMES[field]
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise ConfigError(f"cron: {text[:8]!r} is not a number")
    low, high = _CRON_RANGES[field]
    if not low <= int(text) <= high:
        raise ConfigError(f"cron: {text} is out of range {low}-{high}")
    return int(text)


def _cron_field(text: str, field: int) -> frozenset[int]:
    low, high = _CRON_RANGES[field]
    values: set[int] = set()
    for part in text.split(","):
        base, sep, step_text = part.partition("/")
        step = int(step_text) if sep and step_text.isdigit() and int(step_text) > 0 else 0
        if sep and not step:
            raise ConfigError(f"cron: bad step in {part[:16]!r}")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _cron_value(a, field), _cron_value(b, field)
        else:
            first = _cron_value(base, field)
            last = high if sep else first
        values.update(range(first, last + 1, step or 1))
    if field == 4 and 7 in values:  # Sunday is 0 or 7
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed 5-field cron expression: minute hour day-of-month month day-of-week."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse five whitespace-separated fields; raise ConfigError otherwise."""
        fields = text.split()
        if len(fields) != 5:
            raise ConfigError(f"cron: expected 5 fields, got {len(fields)}")
        minutes, hours, days, months, weekdays = (_cron_field(f, i) for i, f in enumerate(fields))
        return cls(minutes, hours, days, months, weekdays, any_day=fields[2] == "*",
                   any_weekday=fields[4] == "*")

    def matches(self, at: datetime) -> bool:
        """Whether the expression fires at this minute (Vixie cron's day-OR-weekday rule)."""
        if at.minute not in self.minutes or at.hour not in self.hours \
                or at.month not in self.months:
            return False
        day_ok = at.day in self.days
        weekday_ok = (at.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def runs_between(self, start: datetime, end: datetime) -> int:
        """How many times it fires in [start, end), minute by minute (UTC)."""
        at = start.astimezone(UTC).replace(second=0, microsecond=0)
        count = 0
        while at < end:
            count += self.matches(at)
            at += timedelta(minutes=1)
        return count


def project_triggers(project: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (package/function, trigger) pair that a parsed project.yml declares."""
    found: list[tuple[str, dict[str, Any]]] = []
    for package in project.get("packages") or []:
        for function in package.get("functions") or []:
            for trigger in function.get("triggers") or []:
                found.append((f"{package.get('name')}/{function.get('name')}", trigger))
    return found


def check_triggers(project: Mapping[str, Any], max_triggers: int = 3) -> list[str]:
    """Problems with project.yml's scheduled triggers against DESIGN §2 (empty when fine)."""
    problems: list[str] = []
    triggers = project_triggers(project)
    if len(triggers) > max_triggers:
        problems.append(f"{len(triggers)} triggers; a namespace allows {max_triggers}")
    for where, trigger in triggers:
        name = trigger.get("name") or "?"
        if trigger.get("sourceType") != "scheduler":
            problems.append(f"{where} {name}: sourceType must be scheduler")
        details = trigger.get("sourceDetails") or {}
        try:
            Cron.parse(str(details.get("cron", "")))
        except ConfigError as exc:
            problems.append(f"{where} {name}: {exc.message}")
        if not isinstance(details.get("withBody", {}), dict):
            problems.append(f"{where} {name}: withBody must be an object")
    return problems
