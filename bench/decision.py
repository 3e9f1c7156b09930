"""The `auto` routing decision: its time alone, in microseconds."""

from __future__ import annotations

import time

from bench.common import pct
from router import ChatRequest, Policy, Settings


def decision_us(rounds: int = 20_000) -> dict[str, float]:
    """p50/p99 of one `auto` decision on a two-message request, in microseconds."""
    policy = Policy(Settings.from_env({"WORKER_URL": "http://x.invalid"}))
    messages = ChatRequest.model_validate({"messages": [
        {"role": "system", "content": "You help freelancers."},
        {"role": "user", "content": "Can you summarise this job post for me? " * 5}]}).messages
    times = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        policy.decide("auto", messages, None)
        times.append((time.perf_counter_ns() - started) / 1000)
    return {"p50_us": pct(times, 50), "p99_us": pct(times, 99)}
