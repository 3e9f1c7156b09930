"""What a keep-warm schedule costs: GPU hours awake, and the functions' GiB-seconds.

Prices are Hugging Face's published hourly rates for Space hardware (billed per minute awake),
for Inference Endpoints by instance type and size (billed per minute while initializing and
running; "Pricing" in Hugging Face's Inference Endpoints docs, the AWS rows), and DigitalOcean
Functions' free tier (90,000 GiB-s a month, then $0.0000185 per GiB-s, with a 100 ms minimum
per call). Pass `--price-per-hour` when the rate has changed.
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
# huggingface.co/docs/inference-endpoints/support/pricing, AWS GPU and Inferentia rows (USD per
# hour per replica, billed per minute), keyed `instance type-size` as LLM_DEPLOYMENTS'
# `instance=` writes them.
ENDPOINT_PRICE_PER_HOUR: dict[str, float] = {
    "nvidia-t4-x1": 0.5, "nvidia-t4-x4": 3.0,
    "nvidia-l4-x1": 0.8, "nvidia-l4-x4": 3.8,
    "nvidia-a10g-x1": 1.0, "nvidia-a10g-x4": 5.0,
    "nvidia-l40s-x1": 1.8, "nvidia-l40s-x4": 8.3, "nvidia-l40s-x8": 23.5,
    "nvidia-a100-x1": 2.5, "nvidia-a100-x2": 5.0, "nvidia-a100-x4": 10.0,
    "nvidia-a100-x8": 20.0,
    "nvidia-h200-x1": 5.0, "nvidia-h200-x2": 10.0, "nvidia-h200-x4": 20.0,
    "nvidia-h200-x8": 40.0,
    "inf2-x1": 0.75, "inf2-x12": 12.0,
}
# The "Autoscaling" guide: an endpoint scales to zero after an hour without requests unless
# another timeout is set.
DEFAULT_SCALE_TO_ZERO_MIN = 60
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
class DeploymentCost:
    """One more LLM deployment's month (LLM_DEPLOYMENTS): a Space by its hardware, or an
    Inference Endpoint by its instance, awake in the window and for the tail after it."""

    name: str
    kind: str
    instance: str
    price_per_hour: float
    window_hours_per_week: float
    tail_hours_per_week: float
    awake_minutes_per_month: float
    usd_per_month: float
    always_on_usd_per_month: float


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
    deployments: tuple[DeploymentCost, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, functions and deployments included."""
        data = asdict(self)
        data["functions"] = [{**asdict(f), "gib_seconds": round(f.gib_seconds, 1)}
                             for f in self.functions]
        data["deployments"] = [asdict(d) for d in self.deployments]
        return data


def cron_runs_per_month(cron: str) -> float:
    """How often a 5-field cron fires in an average month (a week's count, scaled)."""
    week = Cron.parse(cron).runs_between(_WEEK_START, _WEEK_START + timedelta(days=7))
    return week * WEEKS_PER_MONTH


def price_for(hardware: str, override: float | None = None, *,
              table: dict[str, float] = GPU_PRICE_PER_HOUR, what: str = "hardware") -> float:
    """The hourly price of a Space's hardware flavour (or, with ENDPOINT_PRICE_PER_HOUR, an
    endpoint's instance), or the override."""
    if override is not None:
        return override
    if hardware not in table:
        raise ConfigError(f"no price known for {what} {hardware[:32]!r}; pass --price-per-hour")
    return table[hardware]


def _tail_hours(schedule: Schedule, idle_s: int | None) -> float:
    """Hours a week it stays awake after the window closes, before it sleeps (None: never)."""
    if schedule.always:
        return 0.0
    if idle_s is None or idle_s < 0:
        return 168.0 - schedule.hours_per_week()
    return min(168.0 - schedule.hours_per_week(), schedule.closings_per_week() * idle_s / 3600)


def deployment_cost(name: str, kind: str, instance: str, schedule: Schedule, *,
                    sleep_time_s: int | None, scale_to_zero_min: int = DEFAULT_SCALE_TO_ZERO_MIN,
                    price_per_hour: float | None = None) -> DeploymentCost:
    """A Space (`kind` space, `instance` its hardware) sleeps `sleep_time_s` after the window;
    an endpoint keeps one replica in the window (the warmup sets min replicas to 1) and scales
    to zero `scale_to_zero_min` after it (min replicas 0). Autoscaling past one replica under
    load is not counted."""
    if kind == "endpoint":
        price = price_for(instance, price_per_hour, table=ENDPOINT_PRICE_PER_HOUR,
                          what="endpoint instance")
        tail = _tail_hours(schedule, scale_to_zero_min * 60)
    else:
        price = price_for(instance, price_per_hour)
        tail = _tail_hours(schedule, sleep_time_s)
    window = schedule.hours_per_week()
    awake_hours = (window + tail) * WEEKS_PER_MONTH
    return DeploymentCost(
        name=name, kind=kind, instance=instance, price_per_hour=price,
        window_hours_per_week=round(window, 2), tail_hours_per_week=round(tail, 2),
        awake_minutes_per_month=round(awake_hours * 60), usd_per_month=round(awake_hours * price,
                                                                             2),
        always_on_usd_per_month=round(HOURS_PER_MONTH * price, 2))


def estimate(schedule: Schedule, *, hardware: str, sleep_time_s: int | None,
             functions: tuple[FunctionUse, ...], price_per_hour: float | None = None,
             off_hours: str = "fallback", deployments: tuple[DeploymentCost, ...] = (),
             space: bool = True) -> CostReport:
    """Monthly cost of keeping the Space (`space`: SPACE_URL's) and `deployments` warm on
    `schedule`, plus the functions' use."""
    price = price_for(hardware, price_per_hour) if space else 0.0
    notes: list[str] = []
    window = schedule.hours_per_week()
    tail = _tail_hours(schedule, sleep_time_s)
    if space and not schedule.always and (sleep_time_s is None or sleep_time_s < 0):
        # Upgraded hardware never sleeps without a sleep time: awake all week.
        notes.append("no sleep time set: upgraded hardware never sleeps, so the Space is "
                     "billed around the clock; set SPACE_SLEEP_TIME_S")
    if off_hours == "wake" and not schedule.always:
        notes.append("OFF_HOURS=wake: each off-hours wake adds its awake time (not counted)")
    awake = (window + tail) * WEEKS_PER_MONTH if space else 0.0
    gib_seconds = sum(f.gib_seconds for f in functions)
    functions_usd = max(0.0, gib_seconds - FREE_GIB_SECONDS) * PRICE_PER_GIB_SECOND
    gpu_usd = awake * price
    more_usd = sum(d.usd_per_month for d in deployments)
    return CostReport(
        schedule=schedule.text or "always", hardware=hardware if space else "none",
        price_per_hour=price, sleep_time_s=sleep_time_s,
        window_hours_per_week=round(window, 2), tail_hours_per_week=round(tail, 2),
        awake_hours_per_month=round(awake, 1), gpu_usd_per_month=round(gpu_usd, 2),
        always_on_usd_per_month=round(HOURS_PER_MONTH * price, 2),
        functions=functions, gib_seconds=round(gib_seconds, 1),
        free_tier_share=round(gib_seconds / FREE_GIB_SECONDS, 4),
        functions_usd_per_month=round(functions_usd, 2),
        total_usd_per_month=round(gpu_usd + more_usd + functions_usd, 2), notes=tuple(notes),
        deployments=deployments,
    )


def format_report(report: CostReport) -> str:
    """The report as the CLI prints it."""
    sleep = "not set" if report.sleep_time_s is None else f"{report.sleep_time_s} s"
    lines = [f"schedule: {report.schedule}"]
    if report.hardware != "none":
        lines += [
            f"space: {report.hardware} at ${report.price_per_hour:.2f}/h, sleep time {sleep}",
            f"  awake: {report.window_hours_per_week:g} h/week in the window + "
            f"{report.tail_hours_per_week:g} h/week before it sleeps = "
            f"{report.awake_hours_per_month:g} h/month",
            f"  GPU: ${report.gpu_usd_per_month:,.2f}/month "
            f"(always on: ${report.always_on_usd_per_month:,.2f}/month)",
        ]
    for d in report.deployments:
        lines += [
            f"{d.name} ({d.kind}): {d.instance} at ${d.price_per_hour:.2f}/h",
            f"  awake: {d.window_hours_per_week:g} h/week in the window + "
            f"{d.tail_hours_per_week:g} h/week before it "
            f"{'scales to zero' if d.kind == 'endpoint' else 'sleeps'} = "
            f"{d.awake_minutes_per_month:,.0f} min/month",
            f"  GPU: ${d.usd_per_month:,.2f}/month "
            f"(always on: ${d.always_on_usd_per_month:,.2f}/month)",
        ]
    lines.append(f"functions: free tier {FREE_GIB_SECONDS:,.0f} GiB-s/month, "
                 f"then ${PRICE_PER_GIB_SECOND:.7f}/GiB-s")
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
