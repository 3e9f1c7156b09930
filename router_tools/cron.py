"""5-field cron for DigitalOcean's scheduled triggers (UTC), and project.yml's trigger checks.

Tool code (`space cost`, the trigger checks), never on the `ask` path: the matching itself is
cronsim's (a kept library, Vixie cron semantics: when day-of-month or weekday starts with `*`,
both must match, otherwise either may), so no hand-written cron rules live here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cronsim import CronSim, CronSimError

from router import ConfigError

_MINUTE = timedelta(minutes=1)


def _minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Cron:
    """A checked 5-field cron expression: minute hour day-of-month month day-of-week."""

    text: str

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Check five whitespace-separated fields; raise ConfigError otherwise."""
        fields = text.split()
        if len(fields) != 5:
            raise ConfigError(f"cron: expected 5 fields, got {len(fields)}")
        expression = " ".join(fields)
        try:
            CronSim(expression, datetime(2025, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ConfigError(f"cron: {exc}") from None
        return cls(expression)

    def _after(self, at: datetime) -> Iterator[datetime]:
        """The firing minutes strictly after `at`, in UTC."""
        return iter(CronSim(self.text, _minute(at)))

    def matches(self, at: datetime) -> bool:
        """Whether the expression fires at this minute (UTC)."""
        minute = _minute(at)
        return next(self._after(minute - _MINUTE)) == minute

    def runs_between(self, start: datetime, end: datetime) -> int:
        """How many times it fires in [start, end) (UTC)."""
        count = 0
        for fired in self._after(_minute(start) - _MINUTE):
            if fired >= end:
                return count
            count += 1
        return count  # pragma: no cover - CronSim never ends


def project_triggers(project: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (package/function, trigger) pair that a parsed project.yml declares."""
    found: list[tuple[str, dict[str, Any]]] = []
    for package in project.get("packages") or []:
        for function in package.get("functions") or []:
            for trigger in function.get("triggers") or []:
                found.append((f"{package.get('name')}/{function.get('name')}", trigger))
    return found


def check_triggers(project: Mapping[str, Any], max_triggers: int = 3) -> list[str]:
    """Problems with project.yml's scheduled triggers (empty when fine): DigitalOcean allows
    `max_triggers` per namespace, each `sourceType: scheduler` with a 5-field `cron` and an
    object `withBody`."""
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
