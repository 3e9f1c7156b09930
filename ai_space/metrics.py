"""The model server's Prometheus metrics at `/metrics` (behind the same token as the API).

The engine is wrapped (`ServerMetrics.wrap`): each job's `emit` is timed on its way through,
so neither engine's decode loop changes. Queue depth, running requests and KV-cache use are
read from the engine at scrape time. Labels are the engine, device and finish reasons: never a
prompt, a token or the caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ai_space.generation import Delta, Event, Finished, GenerationJob
from ai_space.protocols import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class MeteredEngine:
    """An engine that times each job's first token and end; the rest is the engine's own."""

    def __init__(self, engine: Engine, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    @property
    def alive(self) -> bool:
        """Whether the decode loop is running."""
        return self.engine.alive

    def start(self) -> None:
        """Start the decode loop."""
        self.engine.start()

    def stop(self) -> None:
        """End every job as cancelled and stop the loop."""
        self.engine.stop()

    def submit(self, job: GenerationJob) -> None:
        """Queue a job whose events are timed on their way to the client."""
        job.emit = self.metrics.timed(job.emit)
        self.engine.submit(job)


class _EngineState(Collector):
    """What the engine holds now: queued and running jobs, KV cache in use, which engine."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Gauges read at scrape time: the batcher's queue, or llama-server's own gauges."""
        info = GaugeMetricFamily("ai_space_engine_info", "The engine and device in use (1)",
                                 labels=["engine", "device"])
        info.add_metric([self.metrics.engine_name, self.metrics.device], 1.0)
        yield info
        engine = self.metrics.engine
        if engine is None:
            yield from self._engine_process()
            return
        queued = len(getattr(engine, "_pending", ()))
        active = int(getattr(engine, "_active", 0))
        yield GaugeMetricFamily("ai_space_queue_depth", "Requests waiting for a generation slot",
                                value=queued)
        yield GaugeMetricFamily("ai_space_running_requests", "Requests generating now",
                                value=max(0, active - queued))
        n_ctx = getattr(engine, "n_ctx", None)
        if isinstance(n_ctx, int) and n_ctx > 0:  # llama.cpp's one shared context
            used = int(getattr(engine, "_reserved", 0))
            yield GaugeMetricFamily("ai_space_kv_cache_usage_ratio",
                                    "Share of the KV cache reserved by running requests",
                                    value=used / n_ctx)


    def _engine_process(self) -> Iterator[GaugeMetricFamily]:
        """llama-server's own gauges, read at this scrape (ai_space/llama/engines.py)."""
        values = self.metrics.engine_values
        if not values:
            return
        ours = {"requests_deferred": ("ai_space_queue_depth",
                                      "Requests waiting for a generation slot"),
                "requests_processing": ("ai_space_running_requests", "Requests generating now"),
                "kv_cache_usage_ratio": ("ai_space_kv_cache_usage_ratio",
                                         "Share of the KV cache held by running requests")}
        for key, (name, text) in ours.items():
            if key in values:
                yield GaugeMetricFamily(name, text, value=values[key])
        for key, value in sorted(values.items()):
            yield GaugeMetricFamily(f"ai_space_engine_{key}",
                                    f"llama-server's {key}, read at scrape time", value=value)


class ServerMetrics:
    """One server's registry: histograms and counters fed by the timed jobs."""

    def __init__(self, engine_name: str, device: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine_name = engine_name
        self.device = device
        self.engine: Engine | None = None  # the real one, once loaded
        # The llama.cpp front's engines report their own gauges, read at each scrape.
        self.engine_gauges: Callable[[], Awaitable[dict[str, float]]] | None = None
        self.engine_values: dict[str, float] = {}
        self._clock = clock
        self.registry = registry = CollectorRegistry()
        self.first_token = Histogram(
            "ai_space_time_to_first_token_seconds", "From a job's submission to its first text",
            buckets=TTFT_BUCKETS, registry=registry)
        self.rate = Histogram(
            "ai_space_tokens_per_second", "A request's completion tokens per second of decoding",
            buckets=RATE_BUCKETS, registry=registry)
        self.batch = Histogram(
            "ai_space_batch_size", "Requests prefilled together with each request",
            buckets=BATCH_BUCKETS, registry=registry)
        self.tokens = Counter("ai_space_tokens", "Tokens in (prompt) and out (completion)",
                              ["direction"], registry=registry)
        self.finished = Counter("ai_space_requests", "Generations ended, by finish reason",
                                ["finish_reason"], registry=registry)
        registry.register(_EngineState(self))

    def wrap(self, engine: Engine) -> MeteredEngine:
        """The engine, metered; its queue and cache are read from it at scrape time."""
        self.engine = engine
        return MeteredEngine(engine, self)

    def timed(self, emit: Callable[[Event], None]) -> Callable[[Event], None]:
        """`emit`, recording the first text and the end of one job (any thread)."""
        submitted = self._clock()
        first: list[float] = []
        lock = threading.Lock()

        def timed_emit(event: Event) -> None:
            now = self._clock()
            if isinstance(event, Delta) and event.text:
                with lock:
                    if not first:
                        first.append(now)
                        self.first_token.observe(now - submitted)
            elif isinstance(event, Finished):
                self._finished(event, first[0] if first else None, now)
            emit(event)

        return timed_emit

    def record(self, submitted: float, first: float | None, event: Finished) -> None:
        """One request relayed by the llama.cpp front (times from time.monotonic)."""
        if first is not None:
            self.first_token.observe(first - submitted)
        self._finished(event, first, time.monotonic())

    def _finished(self, event: Finished, first: float | None, now: float) -> None:
        self.finished.labels(event.finish_reason).inc()
        self.tokens.labels("in").inc(event.prompt_tokens)
        self.tokens.labels("out").inc(event.completion_tokens)
        if event.batch_size:
            self.batch.observe(event.batch_size)
        if first is not None and event.completion_tokens > 1 and now > first:
            # Tokens after the first over the time they took: the decode rate, not the prefill.
            self.rate.observe((event.completion_tokens - 1) / (now - first))

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics: Prometheus' text format."""
        if self.engine_gauges is not None:
            self.engine_values = await self.engine_gauges()
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)

