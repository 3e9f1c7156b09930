"""Issue 25, item 14: the 200-stream crowd's first token with the door, metrics and tracing on
and off, in one run; and where the service's time goes under that load (py-spy).

One bench backend (bench/streaming.py's), one OTLP sink that answers 200 to every export, and
one service per configuration, all running at once; the crowd (bench/streaming.py: 300 idle
connections, then 200 concurrent 60-token streams, a chunk every 20 ms) meets each
configuration in turn, round after round, so a burst of load elsewhere hits them alike. The
door off is the same app on plain uvicorn (httptools, uvloop), as before issue 19.

    .venv/bin/python -m bench.crowd [--rounds 3] [--profile] [--against ../main]

`--against TREE` adds the service of another checkout (all on, its code, this venv) to the
turns: a change and its baseline meet the same load in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, free_port, load, pct

IDLE_CONNECTIONS = 300
CONCURRENT_STREAMS = 200
STREAM_TOKENS = 60
# name: (door, metrics, tracing)
CONFIGS = {"all on": (True, True, True), "door off": (False, True, True),
           "metrics off": (True, False, True), "tracing off": (True, True, False),
           "all off": (False, False, False)}
DIRECT = "straight to the backend"
PROFILE = Path(tempfile.gettempdir()) / "crowd-profile.txt"


def wait_ready(url: str, status: int | None = 200) -> None:
    """Wait until `url` answers `status` (None: answers at all), for a minute at most."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            answer = httpx.post(url, json={}, timeout=2) if status is None else \
                httpx.get(url, timeout=2)
            if status is None or answer.status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stream_body(tokens: int, pace_10ms: float, stream: bool = True) -> dict[str, Any]:
    """A chat body for the bench backend: `tokens` chunks, `pace_10ms` x 10 ms apart."""
    return {"model": "small", "stream": stream, "max_tokens": tokens, "temperature": pace_10ms,
            "messages": [{"role": "user", "content": "hi"}]}


async def crowd(function: str) -> dict[str, Any]:
    """IDLE_CONNECTIONS idle connections, then CONCURRENT_STREAMS streams at once: how many
    completed, their first tokens, and how many idle connections the service kept."""
    idle = []
    host, port = function.split("//")[1].split("/")[0].split(":")
    for _ in range(IDLE_CONNECTIONS):
        idle.append(await asyncio.open_connection(host, int(port)))
    url = function + "/v1/chat/completions"
    body = stream_body(STREAM_TOKENS, 2.0)  # a chunk every 20 ms, like a 50 token/s model
    limits = httpx.Limits(max_connections=CONCURRENT_STREAMS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one() -> tuple[float, int, str]:
            started = time.perf_counter()
            first, count = -1.0, 0
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    return first, count, f"status {response.status_code}"
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"x_sent"' in line:
                        count += 1
                        if first < 0:
                            first = (time.perf_counter() - started) * 1000
            return first, count, "" if count == STREAM_TOKENS + 1 else f"ended after {count}"

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(CONCURRENT_STREAMS)),
                                       return_exceptions=True)
        wall = time.perf_counter() - started
    # A connection the service closed reads to EOF on our side (the writer stays half-open):
    # the service's door closes one that sent no request within HEADER_TIMEOUT_MS.
    closed = await asyncio.gather(*(_closed(reader) for reader, _ in idle))
    alive = closed.count(False)
    for _, writer in idle:
        writer.close()
    done = [r for r in results if isinstance(r, tuple) and not r[2]]
    firsts = [r[0] for r in done]
    # Why the others did not complete: a status, a short stream, or the exception's type.
    why = Counter(r[2] if isinstance(r, tuple) else type(r).__name__ for r in results
                  if not isinstance(r, tuple) or r[2])
    return {"complete": len(done), "incomplete": dict(why),
            "ttft_p50": pct(firsts, 50) if firsts else -1,
            "ttft_p99": pct(firsts, 99) if firsts else -1, "wall_s": wall,
            "idle_open": alive, "firsts": firsts}


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(0.05):
            while await reader.read(65_536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def sink_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An OTLP/HTTP collector that takes every export and keeps nothing."""
    if scope["type"] != "http":
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _serve(app: str, port: int) -> None:
    import uvicorn

    if app == "sink":
        uvicorn.run(sink_app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop",
                    http="httptools", lifespan="off")
        return
    # The service's app on plain uvicorn: the door off.
    from router import ChatRouter, Settings
    from router_service import RouterService, ServiceLimits

    limits = ServiceLimits.from_env(os.environ)
    router = ChatRouter(Settings.from_env(os.environ))
    uvicorn.run(RouterService(router, namespace="bench", metrics=limits.metrics),
                host="127.0.0.1", port=port, log_level="warning", loop="uvloop",
                http="httptools", lifespan="on", backlog=2048, timeout_keep_alive=5)


def against_name(tree: str) -> str:
    """The configuration name of another checkout's service."""
    return f"all on, {Path(tree).resolve().name}'s code"


@contextmanager
def services(against: str = "") -> Iterator[dict[str, tuple[str, int]]]:
    """The backend, the sink and one service per configuration (and, with `against`, that
    checkout's service, all on), ready: {name: (function URL, the serving process's pid)},
    the backend itself first."""
    bport, sink = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKER_URL": f"http://127.0.0.1:{bport}",
           "LOG_LEVEL": "WARNING"}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.streaming", "--serve", str(bport)],
                              cwd=ROOT, env=env),
             subprocess.Popen([sys.executable, "-m", "bench.crowd", "--sink", str(sink)],
                              cwd=ROOT, env=env)]
    try:
        # The baseline: the same crowd straight to the backend (no router at all).
        served = {DIRECT: (f"http://127.0.0.1:{bport}", procs[0].pid)}
        configs = {**CONFIGS, **({against_name(against): CONFIGS["all on"]} if against else {})}
        for name, (door, metrics, tracing) in configs.items():
            port = free_port()
            tree = Path(against).resolve() if name not in CONFIGS else ROOT
            one = {**env, "METRICS": str(metrics).lower(), "PYTHONPATH": str(tree),
                   "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink}" if tracing else ""}
            command = ([sys.executable, "-m", "router_service", "--port", str(port),
                        "--namespace", "bench", "--env-file", ""] if door else
                       [sys.executable, "-m", "bench.crowd", "--plain", str(port)])
            procs.append(subprocess.Popen(command, cwd=tree, env=one,
                                          stderr=subprocess.DEVNULL))
            served[name] = (f"http://127.0.0.1:{port}/api/v1/web/bench/chat/ask",
                            procs[-1].pid)
        for name, (url, _) in served.items():
            wait_ready(url + "/health" if name != DIRECT else url + "/",
                       status=200 if name != DIRECT else None)
        yield served
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)


def _py_spy() -> str | None:
    """py-spy: the venv's, else one on PATH."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def matrix(rounds: int = 3, profile: str = "", against: str = "") -> dict[str, Any]:
    """Each configuration's crowd, `rounds` times, taking turns: first-token p50 / p99 over
    every round's streams, the worst round's p99, and the CPU the serving process used per
    round beside the round's wall time. `profile`: a configuration whose service py-spy
    samples through every round (bench/crowd-profile.txt, py-spy's raw format); `against`:
    another checkout whose service (all on) takes its turn too."""
    names = [DIRECT, *CONFIGS, *([against_name(against)] if against else [])]
    firsts: dict[str, list[float]] = {name: [] for name in names}
    worst: dict[str, float] = dict.fromkeys(names, 0.0)
    complete: dict[str, int] = dict.fromkeys(names, 0)
    incomplete: dict[str, Counter[str]] = {name: Counter() for name in names}
    cpu: dict[str, float] = dict.fromkeys(names, 0.0)
    wall: dict[str, float] = dict.fromkeys(names, 0.0)
    load_at_start = load()
    with services(against) as served, ExitStack() as stack:
        if profile:
            spy = subprocess.Popen([_py_spy() or "py-spy", "record",
                                    "--pid", str(served[profile][1]), "--rate", "400", "-f",
                                    "raw", "-o", str(PROFILE)],
                                   stdout=subprocess.DEVNULL)
            stack.callback(spy.wait, 60)
            stack.callback(spy.send_signal, signal.SIGINT)  # py-spy writes its file then
        for _ in range(rounds):
            for name, (url, pid) in served.items():
                before = _cpu_s(pid)
                got = asyncio.run(crowd(url))
                cpu[name] += _cpu_s(pid) - before
                wall[name] += got["wall_s"]
                firsts[name] += got["firsts"]
                complete[name] += got["complete"]
                incomplete[name].update(got["incomplete"])
                worst[name] = max(worst[name], got["ttft_p99"])
    shares = profile_shares(PROFILE) if profile else {}
    return {"rounds": rounds, "load": f"{load_at_start} at the start, {load()} at the end",
            "profiled": profile, "profile": shares,
            "configs": {name: {
        "complete": complete[name], "incomplete": dict(incomplete[name]),
        "ttft_p50": pct(v, 50) if v else -1,
        "ttft_p99": pct(v, 99) if v else -1, "worst_round_p99": worst[name],
        "cpu_s_per_round": cpu[name] / rounds, "wall_s_per_round": wall[name] / rounds}
        for name, v in firsts.items()}}


# Where the serving loop's time goes, by the frames a sample passes through (first match wins).
# The door's share is its own code's time (what uvicorn's protocol would do anyway is not it).
BUCKETS = [
    ("the door (its own code)", ("router_service/_door.py", "router_service/_fair.py",
                                 "router_service/_wire.py"), True),
    ("metrics", ("router_service/_metrics.py",), False),
    ("tracing", ("router/_tracing.py", "router/_otlp.py", "trace_hook"), False),
    ("opening the backend stream", ("Backend.open_stream",), False),
    ("relay: reading the backend (httpx, httpcore, h11)", ("Response.aiter_bytes",), False),
    ("relay: writing to the client (uvicorn send)", ("RequestResponseCycle.send",), False),
    ("relay: per-read time limits (asyncio.timeout, or the stream's one ReadWatch)",
     ("asyncio/timeouts.py", "arm (", "_fire (", "_schedule ("), False),
    ("relay: JSON decode and encode", ("json/decoder.py", "json/encoder.py"), False),
    ("relay: the rest (SSE parsing, checks, the relay task)", ("pump (",), False),
    ("the request before its stream (parse, admit, validate, route)", ("handle_async",), False),
]


def profile_shares(path: Path) -> dict[str, float]:
    """Each bucket's share (%) of the event loop's samples in a py-spy raw profile."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "Thread._bootstrap" in stack:
            continue  # the exporter's thread: off the event loop, and mostly waiting
        total += int(count)
        for name, marks, own in BUCKETS:
            hit = (any(mark in frames[-1] for mark in marks) if own
                   else any(mark in frame for frame in frames for mark in marks))
            if hit:
                counts[name] = counts.get(name, 0) + int(count)
                break
    shares = {name: 100.0 * counts.get(name, 0) / max(total, 1) for name, _, _ in BUCKETS}
    # What is left is mostly uvloop's own C code (socket I/O, httptools' parsing), which
    # py-spy sees as the event loop's frame.
    shares["the event loop's own C code (uvloop I/O, httptools)"] = 100.0 - sum(shares.values())
    return shares


def rows(fig: dict[str, Any]) -> list[str]:
    """One row per configuration."""
    out = []
    streams = CONCURRENT_STREAMS * fig["rounds"]
    for name, case in fig["configs"].items():
        door, metrics, tracing = CONFIGS.get(name, CONFIGS["all on"] if name != DIRECT
                                             else (False, False, False))
        what = name if name == DIRECT else (
            f"{name} (door {'on' if door else 'off'}, metrics {'on' if metrics else 'off'}, "
            f"tracing {'on' if tracing else 'off'})")
        out.append(f"| {CONCURRENT_STREAMS} concurrent streams, {what} | first token p50 / "
                   f"p99 over {fig['rounds']} rounds | {case['ttft_p50']:.0f} / "
                   f"{case['ttft_p99']:.0f} ms | {case['complete']}/{streams} complete"
                   f"{_why(case.get('incomplete') or {})}; worst "
                   f"round's p99 {case['worst_round_p99']:.0f} ms; its process used "
                   f"{case['cpu_s_per_round']:.2f} s of CPU in a {case['wall_s_per_round']:.2f} s "
                   f"round; load average {fig['load']} | "
                   f"p99 < 1 s: {'**met**' if 0 < case['ttft_p99'] < 1000 else '**missed**'} |")
    if fig["profile"]:
        out.append(f"| where the {fig['profiled']} service's event loop spends the crowd "
                   f"(py-spy, 400 Hz) | share of its samples | " + "; ".join(
                       f"{name} {share:.1f} %" for name, share in fig["profile"].items())
                   + " | | |")
    return out


def _why(incomplete: dict[str, int]) -> str:
    """` (not: 3 ReadTimeout, 1 status 503)`, or nothing when every stream completed."""
    if not incomplete:
        return ""
    return " (not: " + ", ".join(f"{n} {why}" for why, n in sorted(incomplete.items())) + ")"


def main() -> None:
    """Run the matrix (or serve the sink or the plain-uvicorn app) and print its rows."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", nargs="?", const="all on", default="",
                        help="run one configuration's service under py-spy (default: all on)")
    parser.add_argument("--against", default="",
                        help="another checkout whose service (all on) takes its turns too")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plain", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink or args.plain:
        _serve("sink" if args.sink else "plain", args.sink or args.plain)
        return
    if args.profile and _py_spy() is None:
        sys.exit("--profile needs py-spy in the venv (.venv/bin/pip install py-spy) or on PATH")
    fig = matrix(args.rounds, args.profile, args.against)
    sys.stdout.write(json.dumps(fig, indent=1) + "\n" + "\n".join(rows(fig)) + "\n")


if __name__ == "__main__":
    main()
