"""The service's Prometheus metrics: what the router did, counted from its observer hooks.

Every label comes from a small fixed set (routes, backends, fallback reasons, statuses, our
error codes' quotas): never a prompt, a token, a key or a backend URL. Each service has its own
registry, so two in one process (the tests) never mix their counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router import Observer, RequestRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: the first token of a warm backend comes in tens of ms, a woken Space's in tens of s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0)
WAKE_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
CIRCUIT_STATES = ("closed", "open", "half_open")


class _Circuits(Collector):
    """Each backend's circuit state, read at scrape time (1 for the state it is in)."""

    def __init__(self, states: Callable[[], Mapping[str, str]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge family: router_circuit_state{backend, state}."""
        family = GaugeMetricFamily("router_circuit_state",
                                   "1 for the state each backend's circuit breaker is in",
                                   labels=["backend", "state"])
        for backend, current in sorted(self._states().items()):
            for state in (*CIRCUIT_STATES, *(() if current in CIRCUIT_STATES else (current,))):
                family.add_metric([backend, state], 1.0 if state == current else 0.0)
        yield family


class RouterMetrics(Observer):
    """The router's observer: counters and histograms, and the text `/metrics` answers."""

    active = True
    times_wakes = True

    def __init__(self, circuit_states: Callable[[], Mapping[str, str]]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "router_requests", "Requests answered, by route, backend, fallback reason, status",
            ["route", "backend", "fallback", "status"], registry=registry)
        self.attempts = Counter(
            "router_attempts", "Requests sent to backends (tries, retries and fallbacks)",
            ["route"], registry=registry)
        self.first_token = Histogram(
            "router_time_to_first_token_seconds", "A true stream's first chunk, from arrival",
            ["backend"], buckets=LATENCY_BUCKETS, registry=registry)
        self.duration = Histogram(
            "router_request_duration_seconds", "The whole answer, from arrival to its end",
            ["backend", "streamed"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter(
            "router_tokens", "Tokens the backends counted, in (prompt) and out (completion)",
            ["backend", "direction"], registry=registry)
        self.stream_failures = Counter(
            "router_stream_failures", "True streams that ended with an error event after content "
            "(status 200: the headers had gone)", ["code"], registry=registry)
        self.quota = Counter(
            "router_quota_refusals", "Requests a quota refused (429) or kept from the Space",
            ["quota"], registry=registry)
        self.wakes = Counter(
            "router_space_wakes", "Wakes of a Space or an endpoint tried, by what the Hub said",
            ["backend", "outcome"], registry=registry)
        self.wake_seconds = Histogram(
            "router_space_wake_seconds", "From a wake's request to the Hub's first answer that "
            "the restarted (resumed) deployment runs", ["backend"], buckets=WAKE_BUCKETS,
            registry=registry)
        registry.register(_Circuits(circuit_states))

    def request_done(self, record: RequestRecord) -> None:
        """Count one answered request."""
        backend = record.backend or "none"
        self.requests.labels(record.route or "none", backend, record.fallback or "none",
                             str(record.status)).inc()
        if record.attempts:
            self.attempts.labels(record.route or "none").inc(record.attempts)
        self.duration.labels(backend, "true" if record.streamed else "false").observe(
            record.duration_s)
        if record.first_token_s is not None:
            self.first_token.labels(backend).observe(record.first_token_s)
        if record.prompt_tokens is not None:
            self.tokens.labels(backend, "in").inc(record.prompt_tokens)
        if record.completion_tokens is not None:
            self.tokens.labels(backend, "out").inc(record.completion_tokens)
        if record.streamed and record.code:
            self.stream_failures.labels(record.code).inc()
        if record.status == 429:
            self.quota.labels("requests").inc()
        elif record.fallback == "quota":
            self.quota.labels("gpu").inc()

    def wake_checked(self, backend: str, reason: str, stage: str, restarted: bool) -> None:
        """Count a wake."""
        self.wakes.labels(backend, "restarted" if restarted else (
            "failed" if stage == "error" else "not_needed")).inc()

    def wake_ready(self, backend: str, seconds: float) -> None:
        """Time a wake: from its request to the Hub's word that the deployment runs (the
        wake's own thread watches for it), never the idle time until the next answer."""
        self.wake_seconds.labels(backend).observe(seconds)

    def exposition(self) -> bytes:
        """The text `/metrics` answers."""
        return generate_latest(self.registry)
