"""The cost arithmetic behind `space cost`."""

from __future__ import annotations

import pytest

from router._errors import ConfigError
from router._schedule import Schedule
from router_tools.cost import (
    ENDPOINT_PRICE_PER_HOUR,
    FREE_GIB_SECONDS,
    HOURS_PER_MONTH,
    PRICE_PER_GIB_SECOND,
    WEEKS_PER_MONTH,
    FunctionUse,
    cron_runs_per_month,
    deployment_cost,
    estimate,
    format_report,
)

BERLIN = Schedule.parse("Mon-Fri 08:00-20:00 Europe/Berlin")


def test_without_a_sleep_time_the_gpu_is_billed_all_week():
    """GIVEN a window but no sleep time WHEN estimated THEN awake all week, with a note."""
    report = estimate(BERLIN, hardware="a10g-small", sleep_time_s=None, functions=())
    assert report.window_hours_per_week + report.tail_hours_per_week == 168.0
    assert report.gpu_usd_per_month == report.always_on_usd_per_month
    assert any("SPACE_SLEEP_TIME_S" in note for note in report.notes)


def test_price_override_and_unknown_hardware():
    """GIVEN an override WHEN estimated THEN it is used; an unknown flavour needs one."""
    report = estimate(BERLIN, hardware="x9", sleep_time_s=0, functions=(), price_per_hour=2.0)
    assert report.gpu_usd_per_month == pytest.approx(60 * WEEKS_PER_MONTH * 2.0, abs=0.01)
    with pytest.raises(ConfigError, match="price-per-hour"):
        estimate(BERLIN, hardware="x9", sleep_time_s=0, functions=())


def test_functions_beyond_the_free_tier_are_charged():
    """GIVEN a busy `ask` (100 ms minimum per call) WHEN estimated
    THEN GiB-seconds above 90,000 cost $0.0000185 each."""
    busy = FunctionUse("ask", calls_per_month=2_000_000, seconds_per_call=0.05, memory_mb=512)
    assert busy.gib_seconds == pytest.approx(2_000_000 * 0.1 * 0.5)
    report = estimate(Schedule(), hardware="t4-small", sleep_time_s=None, functions=(busy,),
                      off_hours="wake")
    assert report.functions_usd_per_month == pytest.approx(
        (100_000 - FREE_GIB_SECONDS) * PRICE_PER_GIB_SECOND, abs=0.01)
    assert report.notes == ()  # always on: no off-hours, no sleep-time note
    assert "total: $" in format_report(report)


def test_cron_runs_per_month():
    """GIVEN crons WHEN counted THEN every-5-minutes is 2016 a week, scaled to a month."""
    assert cron_runs_per_month("*/5 * * * *") == pytest.approx(2016 * WEEKS_PER_MONTH)
    assert cron_runs_per_month("0 8 * * mon-fri") == pytest.approx(5 * WEEKS_PER_MONTH)


def test_off_hours_wake_is_flagged():
    """GIVEN OFF_HOURS=wake WHEN estimated THEN the note says on-demand wakes are extra."""
    report = estimate(BERLIN, hardware="t4-small", sleep_time_s=600, functions=(),
                      off_hours="wake")
    assert any("OFF_HOURS=wake" in note for note in report.notes)


def test_an_endpoint_is_priced_by_instance_and_minutes_beside_the_space():
    """GIVEN the Berlin weekday window, an endpoint on nvidia-a10g-x1 ($1.00/h on HF's price
    list) that scales to zero 15 minutes after the window, and a second Space on l4x1 sleeping
    after 900 s WHEN estimated with the shorthand Space THEN each is priced by its own rate for
    its awake minutes (60 h window + 5 closings x 15 min a week), and the total adds them up."""
    ep = deployment_cost("ep", "endpoint", "nvidia-a10g-x1", BERLIN, sleep_time_s=None,
                         scale_to_zero_min=15)
    space_b = deployment_cost("space-b", "space", "l4x1", BERLIN, sleep_time_s=900)
    awake_h = (60 + 5 * 0.25) * WEEKS_PER_MONTH
    assert (ep.price_per_hour, ep.tail_hours_per_week) == (1.0, 1.25)
    assert ep.awake_minutes_per_month == round(awake_h * 60)
    assert ep.usd_per_month == pytest.approx(awake_h * 1.0, abs=0.01)
    assert space_b.usd_per_month == pytest.approx(awake_h * 0.80, abs=0.01)
    assert ep.always_on_usd_per_month == pytest.approx(HOURS_PER_MONTH * 1.0, abs=0.01)
    report = estimate(BERLIN, hardware="t4-small", sleep_time_s=900, functions=(),
                      deployments=(ep, space_b))
    assert report.total_usd_per_month == pytest.approx(
        report.gpu_usd_per_month + ep.usd_per_month + space_b.usd_per_month, abs=0.01)
    text = format_report(report)
    assert "ep (endpoint): nvidia-a10g-x1 at $1.00/h" in text and "scales to zero" in text
    assert report.as_dict()["deployments"][0]["name"] == "ep"


def test_an_unknown_endpoint_instance_needs_a_price_and_always_on_is_all_week():
    """GIVEN an instance with no known price WHEN estimated THEN ConfigError asks for
    --price-per-hour; GIVEN no window (always warm) THEN the endpoint is awake all month."""
    with pytest.raises(ConfigError, match="price-per-hour"):
        deployment_cost("ep", "endpoint", "nvidia-x9-x1", BERLIN, sleep_time_s=None)
    always = deployment_cost("ep", "endpoint", "nvidia-l4-x1", Schedule(), sleep_time_s=None)
    assert always.usd_per_month == pytest.approx(always.always_on_usd_per_month, abs=0.01)
    assert set(ENDPOINT_PRICE_PER_HOUR) >= {"nvidia-t4-x1", "nvidia-a10g-x1", "nvidia-l4-x1"}
