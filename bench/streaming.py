"""The service's streams (`python -m router_service`), each figure beside its direct baseline.

Three processes: a bench backend (uvicorn), the service in front of it (`python -m
router_service`, as deployed), and this client. The backend streams `max_tokens` tokens, one
chunk each, `temperature` x 10 ms apart, and stamps each chunk with its send time (`x_sent`),
so the added latency of every chunk is measured on one clock; a `stream: false` request is
answered after 20 ms. The backend keeps idle connections 75 s, as production proxies do
(uvicorn's default 5 s makes it close the router's pooled connections between phases, and new
connections then meet the backend's TIME_WAIT sockets: a 1 s SYN retry on some streams).

The 200 concurrent streams (with 300 idle connections open) meet the service with the door,
metrics and tracing each on and off, and the backend itself, round after round (bench/crowd.py).

    .venv/bin/python -m bench.streaming [--streams 200] [--rounds 3]
    .venv/bin/python -m bench.streaming --metrics [--streams 400]   # METRICS on vs off
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import crowd
from bench.common import ROOT, free_port, pct
from bench.crowd import STREAM_TOKENS, stream_body, wait_ready

JSON_DELAY_S = 0.02


async def backend_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The bench backend (ASGI): paced, stamped chunk streams, or JSON after 20 ms."""
    if scope["type"] != "http":
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    body = json.loads(raw or b"{}")
    tokens, every_s = int(body.get("max_tokens") or 8), float(body.get("temperature") or 0) / 100
    if not body.get("stream"):
        await asyncio.sleep(JSON_DELAY_S)
        data = json.dumps({"id": "b", "object": "chat.completion", "created": 1, "model": "b",
                           "choices": [{"index": 0, "finish_reason": "stop", "message": {
                               "role": "assistant", "content": "ok"}}]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for index in range(tokens + 1):
        last = index == tokens
        chunk = {"id": "b", "object": "chat.completion.chunk", "created": 1, "model": "b",
                 "x_sent": time.time(), "choices": [{"index": 0, "delta": {} if last else {
                     "content": f" t{index}"}, "finish_reason": "stop" if last else None}]}
        await send({"type": "http.response.body", "more_body": True,
                    "body": f"data: {json.dumps(chunk)}\n\n".encode()})
        if every_s and not last:
            await asyncio.sleep(every_s)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _serve_backend(port: int) -> None:
    import uvicorn

    uvicorn.run(backend_app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop",
                http="httptools", lifespan="off", backlog=2048, timeout_keep_alive=75)


@contextmanager
def _processes(metrics: tuple[str, ...] = ("true",)) -> Iterator[tuple[str, ...]]:
    """(backend URL, one service function URL per METRICS value), all ready."""
    bport, sports = free_port(), [free_port() for _ in metrics]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "bench.env"
        env_file.write_text(f"WORKER_URL=http://127.0.0.1:{bport}\nLOG_LEVEL=WARNING\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.streaming", "--serve",
                                       str(bport)], cwd=ROOT, env=env))
        for sport, on in zip(sports, metrics, strict=True):
            procs.append(subprocess.Popen([sys.executable, "-m", "router_service", "--port",
                                           str(sport), "--namespace", "bench", "--env-file",
                                           str(env_file)], cwd=ROOT,
                                          env={**env, "METRICS": on},
                                          stderr=subprocess.DEVNULL))
        backend = f"http://127.0.0.1:{bport}"
        functions = [f"http://127.0.0.1:{sport}/api/v1/web/bench/chat/ask" for sport in sports]
        try:
            for function in functions:
                wait_ready(function + "/health")
            wait_ready(backend + "/", status=None)
            yield backend, *functions
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)


def _one_stream(client: httpx.Client, url: str, body: dict[str, Any]
                ) -> tuple[float, list[float]]:
    """(time to first token, each chunk's delivery lag), in ms."""
    started = time.perf_counter()
    ttft = -1.0
    lags: list[float] = []
    with client.stream("POST", url, json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.time()
            chunk = json.loads(line[6:])
            if "x_sent" in chunk:
                lags.append((now - chunk["x_sent"]) * 1000)
                if ttft < 0:
                    ttft = (time.perf_counter() - started) * 1000
    return ttft, lags


def latency(backend: str, function: str, streams: int) -> dict[str, dict[str, float]]:
    """TTFT and per-chunk lag at concurrency 1, direct and through the service, alternating."""
    body = stream_body(STREAM_TOKENS, 0.2)  # a chunk every 2 ms
    paths = {"direct": backend + "/v1/chat/completions",
             "service": function + "/v1/chat/completions"}
    ttft: dict[str, list[float]] = {name: [] for name in paths}
    lags: dict[str, list[float]] = {name: [] for name in paths}
    with httpx.Client(timeout=30) as client:
        for index in range(streams + 10):
            for name, url in paths.items():
                first, chunk_lags = _one_stream(client, url, body)
                if index >= 10:  # the first ten warm the pools
                    ttft[name].append(first)
                    lags[name].extend(chunk_lags)
    return {name: {"ttft_p50": pct(ttft[name], 50), "ttft_p99": pct(ttft[name], 99),
                   "chunk_p50": pct(lags[name], 50), "chunk_p99": pct(lags[name], 99)}
            for name in paths}


def _rate(url: str, body: dict[str, Any], seconds: float, concurrency: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            end = time.perf_counter() + seconds
            times: list[float] = []
            errors = 0

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < end:
                    started = time.perf_counter()
                    try:
                        answer = await client.post(url, json=body)
                        errors += answer.status_code != 200
                    except httpx.HTTPError:
                        errors += 1
                    times.append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started
        return {"req_s": len(times) / wall, "p50": pct(times, 50), "p99": pct(times, 99),
                "errors": errors}

    return asyncio.run(run())


def streaming(streams: int = 200, rate_s: float = 10.0, concurrency: int = 32,
              rounds: int = 3) -> dict[str, Any]:
    """Every figure of the service's streaming bench."""
    with _processes() as (backend, function):
        out: dict[str, Any] = {"latency": latency(backend, function, streams)}
        body = stream_body(8, 0, stream=False)
        out["rate"] = {
            "direct": _rate(backend + "/v1/chat/completions", body, rate_s, concurrency),
            "service": _rate(function + "/v1/chat/completions", body, rate_s, concurrency)}
        out["concurrency"] = concurrency
        out["streams"] = streams
    # Its own processes, one service per configuration (the first set is stopped by now).
    out["crowd"] = crowd.matrix(rounds)
    return out


def metrics_cost(streams: int = 400) -> dict[str, Any]:
    """Time to first token through two services, METRICS on and off, taking turns; and the
    observer's own work on that path (record + stream wrapper), timed in-process."""
    with _processes(("true", "false")) as (_, on, off):
        body = stream_body(4, 0)
        firsts: dict[str, list[float]] = {"on": [], "off": []}
        with httpx.Client(timeout=30) as client:
            for index in range(streams + 20):
                for name, url in (("on", on), ("off", off)):
                    first, _ = _one_stream(client, url + "/v1/chat/completions", body)
                    if index >= 20:  # the first twenty warm the pools
                        firsts[name].append(first)
    out: dict[str, Any] = {name: {"ttft_p50": pct(v, 50), "ttft_p90": pct(v, 90)}
                           for name, v in firsts.items()}
    out["added_p50_ms"] = out["on"]["ttft_p50"] - out["off"]["ttft_p50"]
    out["observer_us"] = _observer_us()
    out["streams"] = streams
    return out


def _observer_us(rounds: int = 20_000) -> float:
    """Microseconds the metrics take to count one finished stream, from its record: all of
    their work, and it comes after the last chunk (none of it before the first)."""
    from router import RequestRecord
    from router_service import RouterMetrics

    metrics = RouterMetrics(lambda: {"worker": "closed"})
    record = RequestRecord("POST", "/v1/chat/completions", route="worker", status=200,
                           streamed=True, duration_s=0.5, first_token_s=0.05)
    hop = record.turn_to("worker")
    hop.sent, hop.answered = 1, True
    hop.add_usage({"prompt_tokens": 5, "completion_tokens": 64, "total_tokens": 69})
    started = time.perf_counter()
    for _ in range(rounds):
        metrics.request_done(record)
    return (time.perf_counter() - started) / rounds * 1e6


def rows(fig: dict[str, Any]) -> list[str]:
    """The bench table's rows for the service."""
    lat, rate = fig["latency"], fig["rate"]
    d, s = lat["direct"], lat["service"]
    add = {k: s[k] - d[k] for k in d}
    ok = add["ttft_p99"] <= 1 and add["chunk_p99"] <= 1
    return [
        f"| service stream, concurrency 1, {fig['streams']} streams of {STREAM_TOKENS} chunks "
        f"| added time to first token, p50 / p99 | {add['ttft_p50']:.3f} / "
        f"{add['ttft_p99']:.3f} ms | direct {d['ttft_p50']:.2f} / {d['ttft_p99']:.2f} ms, "
        f"service {s['ttft_p50']:.2f} / {s['ttft_p99']:.2f} ms | added p99 ≤ 1 ms: "
        f"{'**met**' if ok else '**missed**'} |",
        f"| | added per-chunk latency, p50 / p99 | {add['chunk_p50']:.3f} / "
        f"{add['chunk_p99']:.3f} ms | direct {d['chunk_p50']:.3f} / {d['chunk_p99']:.3f} ms "
        f"(backend send to client receive) | Go gateway 0.94 ms, Portkey 3.3 ms (published) |",
        f"| sustained requests, backend answers in 20 ms, {fig['concurrency']} clients | "
        f"req/s; p50 / p99 | {rate['service']['req_s']:.0f} req/s; "
        f"{rate['service']['p50']:.1f} / {rate['service']['p99']:.1f} ms | direct "
        f"{rate['direct']['req_s']:.0f} req/s; {rate['direct']['p50']:.1f} / "
        f"{rate['direct']['p99']:.1f} ms; errors {rate['service']['errors']} | |",
        *crowd.rows(fig["crowd"]),
    ]


def main() -> None:
    """Serve the bench backend (`--serve PORT`), or run the bench and print its rows."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", type=int)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the 200-stream crowd per configuration")
    parser.add_argument("--metrics", action="store_true",
                        help="only the time to first token with METRICS on vs off")
    args = parser.parse_args()
    if args.serve:
        _serve_backend(args.serve)
        return
    if args.metrics:
        sys.stdout.write(json.dumps(metrics_cost(args.streams), indent=1) + "\n")
        return
    fig = streaming(args.streams, rounds=args.rounds)
    sys.stdout.write(json.dumps(fig, indent=1) + "\n" + "\n".join(rows(fig)) + "\n")


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
