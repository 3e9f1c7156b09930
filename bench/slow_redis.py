"""A slow Redis under the service's quotas: what it costs the requests that do not wait for it.

Issue 19 found the quota's Redis call blocking the service's event loop: at 30 ms a reply,
throughput fell from 73 to 22 req/s and a stream's chunk gap doubled. This bench runs the
service (`python -m router_service`, a process of its own) with RATE_LIMIT_PER_MINUTE counted in
a real redis-server, reached straight or through a loopback proxy that delays every reply by
`--delay-ms`, with REDIS_TIMEOUT_MS (`--redis-timeout-ms`) above the delay so the quota counts.
The backend is the streaming bench's (JSON after 20 ms). It prints req/s, p50 and p99 of
`--clients` concurrent clients, how many requests Redis counted, and the chunk gaps of one
stream (60 chunks, 20 ms apart at the backend) that runs meanwhile; that stream is counted once,
at its start. `--root` runs the service from another checkout (a baseline).

    .venv/bin/python -m bench.slow_redis [--delay-ms 30] [--seconds 10] [--root PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import ROOT, free_port, load, machine, pct
from bench.crowd import stream_body, wait_ready
from bench.streaming import _rate
from tests.support.redis_server import PASSWORD, RedisServer

# Every subject's request counter (the service is open: one per client address).
COUNTERS = "chat-router:quota:all:*"


class DelayingProxy:
    """127.0.0.1:<port> to `target`; every chunk the server sends waits `delay_s` first. It runs
    in a process of its own, so the load generator does not slow it down."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.slow_redis", "--proxy", str(self.port),
             str(target_port), str(delay_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.process.stdout is not None
        self.process.stdout.readline()  # "listening"

    def stop(self) -> None:
        """End the proxy's process."""
        self.process.terminate()
        self.process.wait(10)


async def _proxy(port: int, target_port: int, delay_s: float) -> None:
    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       delay: float) -> None:
            try:
                while data := await source.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            sink.close()

        await asyncio.gather(pump(reader, up_writer, 0.0), pump(up_reader, writer, delay_s))

    server = await asyncio.start_server(connect, "127.0.0.1", port)
    sys.stdout.write("listening\n")
    sys.stdout.flush()
    await server.serve_forever()


@contextmanager
def _service(root: Path, redis_url: str, timeout_ms: int) -> Iterator[str]:
    """The bench backend and the service from `root`; yields the function URL."""
    bport, sport = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "bench.env"
        env_file.write_text(f"WORKER_URL=http://127.0.0.1:{bport}\nLOG_LEVEL=ERROR\n"
                            f"REDIS_URL={redis_url}\nRATE_LIMIT_PER_MINUTE=100000000\n"
                            f"REDIS_TIMEOUT_MS={timeout_ms}\n")
        procs = [subprocess.Popen([sys.executable, "-m", "bench.streaming", "--serve",
                                   str(bport)], cwd=ROOT, env={**os.environ,
                                                               "PYTHONPATH": str(ROOT)}),
                 subprocess.Popen([sys.executable, "-m", "router_service", "--port",
                                   str(sport), "--namespace", "bench", "--env-file",
                                   str(env_file)], cwd=root,
                                  env={**os.environ, "PYTHONPATH": str(root)},
                                  stderr=subprocess.DEVNULL)]
        function = f"http://127.0.0.1:{sport}/api/v1/web/bench/chat/ask"
        try:
            wait_ready(function + "/health")
            wait_ready(f"http://127.0.0.1:{bport}/", status=None)
            yield function
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)


def _stream_gap(url: str, result: dict[str, float]) -> None:
    """One 60-chunk stream (20 ms apart at the backend): its largest gap between chunks."""
    arrivals: list[float] = []
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", url, json=stream_body(60, 2.0)) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"choices":[{' in line.replace(" ", ""):
                arrivals.append(time.perf_counter())
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    result["max_gap_ms"] = max(gaps) if gaps else float("nan")
    result["p50_gap_ms"] = pct(gaps, 50) if gaps else float("nan")


def measure(root: Path, delay_ms: float, seconds: float, clients: int, timeout_ms: int
            ) -> dict[str, Any]:
    """The figures with Redis straight, then through the delaying proxy."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        proxy = DelayingProxy(server.port, delay_ms / 1000.0)
        try:
            store = redis.Redis.from_url(server.url)
            for name, port in (("redis straight", server.port),
                               (f"redis +{delay_ms:.0f} ms a reply", proxy.port)):
                url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
                store.flushall()
                with _service(root, url, timeout_ms) as function:
                    chat = function + "/v1/chat/completions"
                    gap: dict[str, float] = {}
                    streamer = threading.Thread(target=_stream_gap, args=(chat, gap))
                    streamer.start()
                    rate = _rate(chat, stream_body(8, 0, stream=False), seconds, clients)
                    streamer.join(60)
                    # Requests the quota really counted (the rest failed open): a quota that
                    # gave up on Redis would make the figures look better than they are.
                    counted = sum(int(store.get(key) or 0) for key in store.keys(COUNTERS))
                    out[name] = {**rate, **gap, "counted": counted}
        finally:
            proxy.stop()
            server.stop()
    return out


def main() -> None:
    """Run the bench and print its figures as JSON and as table rows."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay-ms", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--proxy", nargs=3, metavar=("PORT", "TARGET_PORT", "DELAY_S"))
    # Above the delay, so the quota counts (a call past it fails open and skips Redis 5 s).
    parser.add_argument("--redis-timeout-ms", type=int, default=200)
    args = parser.parse_args()
    if args.proxy:
        port, target, delay = args.proxy
        asyncio.run(_proxy(int(port), int(target), float(delay)))
        return
    started_load = load()
    figures = measure(args.root.resolve(), args.delay_ms, args.seconds, args.clients,
                      args.redis_timeout_ms)
    sys.stdout.write(json.dumps(figures, indent=1) + "\n")
    sys.stdout.write(f"{machine()}, load average {started_load} at the start, service from "
                     f"{args.root}\n")
    for name, fig in figures.items():
        sys.stdout.write(f"| {name} | {fig['req_s']:.0f} req/s | p50 / p99 {fig['p50']:.1f} / "
                         f"{fig['p99']:.1f} ms | errors {fig['errors']}; counted in Redis "
                         f"{fig['counted']} of about {fig['req_s'] * args.seconds + 1:.0f} | "
                         f"a stream's chunk gap p50 / max {fig['p50_gap_ms']:.1f} / "
                         f"{fig['max_gap_ms']:.1f} ms |\n")


if __name__ == "__main__":
    main()
