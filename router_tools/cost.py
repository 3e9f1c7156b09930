"""What a keep-warm schedule costs: GPU hours awake, and the functions' GiB-seconds.

Prices are Hugging Face's published hourly rates for Space hardware (billed per minute awake)
and DigitalOcean Functions' free tier (90,000 GiB-s a month, then $0.0000185 per GiB-s, with a
100 ms minimum per call). Pass `--price-per-hour` when the rate has changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from router import ConfigError, Schedule
from router_tools.cron import Cron

# huggingface.co/docs/hub/spaces-gpus, "Hourly Price" (USD).
GPU_PRICE_PER_HOUR: dict[str, float] = {
    "cpu-basic": 0.0, "cpu-upgrade": 0.03,
    "t4-small": 0.40, "t4-medium": 0.60,
    "l4x1": 0.80, "l4x4": 3.80,
    "l40sx1": 1.80, "l40sx4": 8.30, "l40sx8": 23.50,
    "a10g-small": 1.00, "a10g-large": 1.50, "a10g-largex2": 3.00, "a10g-largex4": 5.00,
    "a100-large": 4.00,
}
FREE_GIB_SECONDS = 90_000.0
PRICE_PER_GIB_SECOND = 0.0000185
MIN_BILLED_SECONDS = 0.1
WEEKS_PER_MONTH = 365.25 / 12 / 7
HOURS_PER_MONTH = 168.0 * WEEKS_PER_MONTH
# A fixed Monday, so that a week of cron runs is counted the same way every time.
_WEEK_START = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FunctionUse:
    """One function's monthly use: calls, seconds per call, memory."""

    name: str
    calls_per_month: float
    seconds_per_call: float
    memory_mb: int

    @property
    def gib_seconds(self) -> float:
        """GiB-seconds a month, with DigitalOcean's 100 ms minimum per call."""
        billed = max(self.seconds_per_call, MIN_BILLED_SECONDS)
        return self.calls_per_month * billed * self.memory_mb / 1024.0


@dataclass(frozen=True, slots=True)
class CostReport:
    """The monthly figures `space cost` prints."""

    schedule: str
    hardware: str
    price_per_hour: float
    sleep_time_s: int | None
    window_hours_per_week: float
    tail_hours_per_week: float
    awake_hours_per_month: float
    gpu_usd_per_month: float
    always_on_usd_per_month: float
    functions: tuple[FunctionUse, ...]
    gib_seconds: float
    free_tier_share: float
    functions_usd_per_month: float
    total_usd_per_month: float
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, functions included."""
        data = asdict(self)
        data["functions"] = [{**asdict(f), "gib_seconds": round(f.gib_seconds, 1)}
                             for f in self.functions]
        return data


def cron_runs_per_month(cron: str) -> float:
    """How often a 5-field cron fires in an average month (a week's count, scaled)."""
    week = Cron.parse(cron).runs_between(_WEEK_START, _WEEK_START + timedelta(days=7))
    return week * WEEKS_PER_MONTH


def price_for(hardware: str, override: float | None = None) -> float:
    """The hourly price of a hardware flavour, or the override."""
    if override is not None:
        return override
    if hardware not in GPU_PRICE_PER_HOUR:
        raise ConfigError(f"no price known for hardware {hardware[:32]!r}; "
                          "pass --price-per-hour")
    return GPU_PRICE_PER_HOUR[hardware]


def estimate(schedule: Schedule, *, hardware: str, sleep_time_s: int | None,
             functions: tuple[FunctionUse, ...], price_per_hour: float | None = None,
             off_hours: str = "fallback") -> CostReport:
    """Monthly cost of keeping the Space warm on `schedule`, plus the functions' use."""
    price = price_for(hardware, price_per_hour)
    notes: list[str] = []
    window = schedule.hours_per_week()
    if schedule.always:
        tail = 0.0
    elif sleep_time_s is None or sleep_time_s < 0:
        # Upgraded hardware never sleeps without a sleep time: awake all week.
        tail = 168.0 - window
        notes.append("no sleep time set: upgraded hardware never sleeps, so the Space is "
                     "billed around the clock; set SPACE_SLEEP_TIME_S")
    else:
        tail = min(168.0 - window, schedule.closings_per_week() * sleep_time_s / 3600.0)
    if off_hours == "wake" and not schedule.always:
        notes.append("OFF_HOURS=wake: each off-hours wake adds its awake time (not counted)")
    awake = (window + tail) * WEEKS_PER_MONTH
    gib_seconds = sum(f.gib_seconds for f in functions)
    functions_usd = max(0.0, gib_seconds - FREE_GIB_SECONDS) * PRICE_PER_GIB_SECOND
    gpu_usd = awake * price
    return CostReport(
        schedule=schedule.text or "always", hardware=hardware, price_per_hour=price,
        sleep_time_s=sleep_time_s, window_hours_per_week=round(window, 2),
        tail_hours_per_week=round(tail, 2), awake_hours_per_month=round(awake, 1),
        gpu_usd_per_month=round(gpu_usd, 2),
        always_on_usd_per_month=round(HOURS_PER_MONTH * price, 2),
        functions=functions, gib_seconds=round(gib_seconds, 1),
        free_tier_share=round(gib_seconds / FREE_GIB_SECONDS, 4),
        functions_usd_per_month=round(functions_usd, 2),
        total_usd_per_month=round(gpu_usd + functions_usd, 2), notes=tuple(notes),
    )


def format_report(report: CostReport) -> str:
    """The report as the CLI prints it."""
    sleep = "not set" if report.sleep_time_s is None else f"{report.sleep_time_s} s"
    lines = [
        f"schedule: {report.schedule}",
        f"space: {report.hardware} at ${report.price_per_hour:.2f}/h, sleep time {sleep}",
        f"  awake: {report.window_hours_per_week:g} h/week in the window + "
        f"{report.tail_hours_per_week:g} h/week before it sleeps = "
        f"{report.awake_hours_per_month:g} h/month",
        f"  GPU: ${report.gpu_usd_per_month:,.2f}/month "
        f"(always on: ${report.always_on_usd_per_month:,.2f}/month)",
        f"functions: free tier {FREE_GIB_SECONDS:,.0f} GiB-s/month, "
        f"then ${PRICE_PER_GIB_SECOND:.7f}/GiB-s",
    ]
    for use in report.functions:
        lines.append(f"  {use.name}: {use.calls_per_month:,.0f} calls/month x "
                     f"{max(use.seconds_per_call, MIN_BILLED_SECONDS):g} s x "
                     f"{use.memory_mb / 1024:g} GiB = {use.gib_seconds:,.0f} GiB-s")
    lines += [
        f"  total: {report.gib_seconds:,.0f} GiB-s = {report.free_tier_share:.1%} of the free "
        f"tier -> ${report.functions_usd_per_month:,.2f}/month",
        f"total: ${report.total_usd_per_month:,.2f}/month",
    ]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
