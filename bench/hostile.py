"""The service's door under hostile clients (issues 19 and 25), while one honest client asks.

Three processes: the bench backend (bench/streaming.py's, JSON after 20 ms), the service in
front of it (`python -m router_service`, keys required, its default door limits unless the
environment sets them), and this client. The honest client sends one keyed chat request every
250 ms, each on a new connection, from 127.0.0.1: first alone (its quiet p99), then through
each attack in turn (bench/attacks.py: each attacker group its own /24 of 127/8):

1. 2,000 connections that send nothing (one address);
2. 2,000 that stop halfway through their headers;
3. 300 keyed bodies that drip one byte a second;
4. 600 unauthenticated 200 KB bodies (the credential must be checked before the body);
5. a distributed flood: 8 groups keep 4,300 sockets open (idle, half-sent headers, dripping
   bodies), topping up each one the service closes;
6. slow readers: 3 groups keep 2,100 complete requests open (`GET /health`, which needs no
   credential), never read their answers, and top up;
7. one connection that pipelines 160,000 `GET /health` (8 MB) in one write;
8. 1,000 unauthenticated warm-up pings, each sending 250 KB of a 256 KB body;
9. big headers: one of 64 MB, ten of 16 MB, and one request with 100,000 fields.

For each it prints the honest client's answered share and p99 beside its quiet p99, the
service's peak RSS during the attack, and what the attackers saw; and the service's peak RSS
over the whole run (VmHWM).

    .venv/bin/python -m bench.hostile [--server door|uvicorn|hypercorn|granian] [--quiet-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import attacks
from bench.common import ROOT, free_port, pct

API_KEY = "hostile-bench-key-0123456789"
IDLE, HALF, SLOW, UNAUTH = 2_000, 2_000, 300, 600
UNAUTH_BYTES = 200_000
FLOOD_GROUPS, FLOOD_SOCKETS = 8, 4_300
READER_GROUPS, READER_SLOTS = 3, 2_100
PIPELINED = 160_000
WARMUPS, WARMUP_BYTES = 1_000, 256_000
# A flood lasts this long; every phase at least PHASE_S, so the honest client asks often.
ATTACK_S, PHASE_S = 15.0, 8.0
HONEST_EVERY_S = 0.25
CHAT = {"model": "small", "stream": False, "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]}
# Granian and Hypercorn, for bench/servers.py: a venv of their own that sees the project's.
SERVERS_VENV = ROOT / ".venv-servers"


def _raise_fd_limit(wanted: int = 16_384) -> int:
    # 2,000 attacker sockets here and as many in the service: past the usual soft 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's RSS now (VmRSS) or its peak (VmHWM), plus its children's: Granian serves
    from a worker process, so the parent's alone would miss the app."""
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _parent(p) == pid]
    total = 0.0
    for each in pids:
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith(field + ":"))
    return total / 1024


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@contextmanager
def rss_peak(pid: int) -> Iterator[dict[str, float]]:
    """The highest RSS sampled (every 100 ms) while the block runs: `peak_mib`."""
    out = {"peak_mib": _rss_mib(pid)}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            out["peak_mib"] = max(out["peak_mib"], _rss_mib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join(5)


def _command(server: str, port: int) -> list[str]:
    """How each server under comparison serves the same app (bench/app.py)."""
    if server == "door":
        return [sys.executable, "-m", "router_service", "--port", str(port), "--namespace",
                "bench", "--env-file", ""]
    if server == "uvicorn":
        return [sys.executable, "-m", "bench.hostile", "--plain-uvicorn", str(port)]
    python = str(SERVERS_VENV / "bin" / "python")
    if server == "hypercorn":
        # --read-timeout: no byte for this long closes the connection (its only such limit).
        return [python, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "--read-timeout",
                "5", "--keep-alive", "5", "--backlog", "2048", "--worker-class", "uvloop",
                "--log-level", "warning", "bench.app:app"]
    if server == "granian":
        return [python, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--http", "1", "--loop", "uvloop", "--no-ws",
                "--http1-header-read-timeout", "5000", "--backlog", "2048",
                "--log-level", "warning", "bench.app:app"]
    raise ValueError(server)


@contextmanager
def processes(server: str, *, keys: bool = True
              ) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """(the backend's URL, the function URL, the service's process), ready; `keys`: the
    service requires API_KEY."""
    bport, sport = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKER_URL": f"http://127.0.0.1:{bport}",
           "LOG_LEVEL": "WARNING", "API_KEYS": API_KEY if keys else ""}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.streaming", "--serve", str(bport)],
                              cwd=ROOT, env=env)]
    service = subprocess.Popen(_command(server, sport), cwd=ROOT, env=env,
                               stderr=subprocess.DEVNULL)
    procs.append(service)
    function = f"http://127.0.0.1:{sport}/api/v1/web/bench/chat/ask"
    try:
        _wait(function + "/health")
        yield f"http://127.0.0.1:{bport}", function, service
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def _wait(url: str) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Honest:
    """One keyed chat request every HONEST_EVERY_S, each on a new connection, on its own
    thread."""

    def __init__(self, url: str) -> None:
        self.url = url + "/v1/chat/completions"
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                with httpx.Client(timeout=10) as client:
                    answer = client.post(self.url, json=CHAT, headers={"x-api-key": API_KEY})
                if answer.status_code == 200:
                    self.times.append((time.perf_counter() - started) * 1000)
                else:
                    self.failures.append(str(answer.status_code))
            except httpx.HTTPError as exc:
                self.failures.append(type(exc).__name__)
            self._stop.wait(max(0.0, HONEST_EVERY_S - (time.perf_counter() - started)))

    def start(self) -> Honest:
        """Start asking."""
        self._thread.start()
        return self

    @staticmethod
    @contextmanager
    def elsewhere(url: str) -> Iterator[dict[str, Any]]:
        """The honest client in a process of its own (the attackers' bursts here must not
        slow it down through the GIL); its figures fill the dict when the block ends."""
        proc = subprocess.Popen([sys.executable, "-m", "bench.hostile", "--honest", url],
                                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out: dict[str, Any] = {}
        try:
            yield out
        finally:
            stdout, _ = proc.communicate(b"", timeout=60)  # closing stdin stops it
            out.update(json.loads(stdout))

    def stop(self) -> dict[str, Any]:
        """Stop, and sum up."""
        self._stop.set()
        self._thread.join(15)
        total = len(self.times) + len(self.failures)
        return {"requests": total, "ok": len(self.times),
                "success": len(self.times) / total if total else 0.0,
                "p50_ms": pct(self.times, 50) if self.times else -1,
                "p99_ms": pct(self.times, 99) if self.times else -1,
                "failures": sorted(set(self.failures))}


def _head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in
                                                                headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _summary(held: list[float]) -> dict[str, float]:
    # Under 1 s: refused at once (the group's share), or answered and closed (401, 413).
    return {"n": len(held), "under_1s": sum(1 for h in held if h < 1),
            "p50_s": pct(held, 50) if held else 0.0, "max_s": max(held, default=0.0)}


Attack = Callable[[], Coroutine[Any, Any, Any]]


def _attacks(port: int, function: str) -> dict[str, Attack]:
    """Every attack, by name, in the order they run."""
    prefix = function.split(str(port), 1)[1]
    path = prefix + "/v1/chat/completions"
    body = json.dumps(CHAT).encode()
    keyed = {"x-api-key": API_KEY, "content-type": "application/json"}
    half = _head(path, keyed)
    slow = _head(path, {**keyed, "content-length": str(len(body))})
    unauth = _head(path, {"content-type": "application/json",
                          "content-length": str(UNAUTH_BYTES)}) + b"x" * UNAUTH_BYTES
    warmup = _head(path, {"x-chat-warmup": "1", "content-type": "application/json",
                          "content-length": str(WARMUP_BYTES)})
    kinds = [(b"", b""), (half[:len(half) // 2], b""), (slow, body)]  # idle, half, dripping
    flood = [(attacks.group_address(1 + i % FLOOD_GROUPS, 1 + (i // FLOOD_GROUPS) % 250),
              *kinds[i % 3]) for i in range(FLOOD_SOCKETS)]
    health = _head(prefix + "/health", {}, "GET")
    readers = [(attacks.group_address(20 + i % READER_GROUPS, 1 + (i // READER_GROUPS) % 250),
                health) for i in range(READER_SLOTS)]
    a = attacks
    return {
        f"{IDLE} idle connections": lambda: a.wave(port, IDLE, b"", source=a.group_address(1)),
        f"{HALF} half-sent headers": lambda: a.wave(port, HALF, half[:len(half) // 2],
                                                    source=a.group_address(1)),
        f"{SLOW} keyed bodies dripping a byte a second": lambda: a.wave(
            port, SLOW, slow, drip=body, source=a.group_address(2)),
        f"{UNAUTH} unauthenticated {UNAUTH_BYTES // 1000} KB bodies": lambda: a.wave(
            port, UNAUTH, unauth, source=a.group_address(3)),
        f"distributed flood: {FLOOD_GROUPS} groups keep {FLOOD_SOCKETS:,} sockets "
        f"(idle, half headers, dripping)": lambda: a.flood(port, flood, ATTACK_S),
        f"slow readers: {READER_GROUPS} groups keep {READER_SLOTS:,} requests unread":
            lambda: a.slow_readers(port, readers, ATTACK_S),
        f"one connection pipelines {PIPELINED:,} GET /health":
            lambda: a.pipelined(port, health, PIPELINED, ATTACK_S),
        f"{WARMUPS:,} unauthenticated warm-up pings with {WARMUP_BYTES // 1000} KB bodies":
            lambda: a.wave(port, WARMUPS, warmup + b"x" * (WARMUP_BYTES - 6_000),
                           source=a.group_address(13)),
        "big headers: one 64 MB, ten 16 MB, one of 100,000 fields":
            lambda: a.big_headers(port, prefix + "/health"),
    }


def hostile(server: str = "door", quiet_s: float = 20.0) -> dict[str, Any]:
    """Every figure of the hostile bench: the quiet honest client, then each attack with the
    honest client's figures and the service's peak RSS beside what the attackers saw."""
    fds = _raise_fd_limit()
    phases: dict[str, Any] = {}
    with processes(server) as (_, function, service):
        port = int(function.split(":")[2].split("/")[0])
        with rss_peak(service.pid) as quiet_rss, Honest.elsewhere(function) as quiet:
            time.sleep(quiet_s)  # the quiet phase's length, not a synchronisation
        for name, attack in _attacks(port, function).items():
            started = time.monotonic()
            with rss_peak(service.pid) as rss, Honest.elsewhere(function) as honest:
                seen = asyncio.run(attack())
                time.sleep(max(0.0, PHASE_S - (time.monotonic() - started)))  # the phase's
            if isinstance(seen, list):  # a wave: how long its sockets stayed open
                seen = _summary(seen)
            elif "held" in seen:
                seen = {**seen, "held": _summary(seen["held"])}
            phases[name] = {"honest": honest, "peak_rss_mib": rss["peak_mib"], "seen": seen}
        hwm = _rss_mib(service.pid, "VmHWM")
    return {"server": server, "fd_limit": fds, "quiet": quiet,
            "quiet_rss_mib": quiet_rss["peak_mib"], "phases": phases, "peak_rss_mib": hwm}


def _seen(seen: dict[str, Any]) -> str:
    if "under_1s" in seen:
        still = " (still open when the bench let go)" if seen["max_s"] >= attacks.HOLD_S else ""
        return (f"sockets open p50 / max {seen['p50_s']:.2f} / {seen['max_s']:.2f} s{still}; "
                f"{seen['under_1s']} closed within 1 s")
    if "answered" in seen:
        return f"{seen['answered']:,} of {seen['sent']:,} answered in {ATTACK_S:.0f} s"
    if "sent_mb" in seen:
        return (f"cut off after {seen['sent_mb']} MB of {seen['meant_mb']} MB; answers "
                f"{seen['answers']} ('none': reset before the 431 was read)")
    answers = f"; answers {seen['answers']}" if seen.get("answers") else ""
    return (f"{seen['connections']:,} connections in {ATTACK_S:.0f} s, open p50 / max "
            f"{seen['held']['p50_s']:.2f} / {seen['held']['max_s']:.2f} s{answers}")


def rows(fig: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """The bench table's rows: the quiet honest client, then one row per attack."""
    quiet = fig["quiet"]
    out = [f"| hostile clients ({fig['server']}), a keyed request every "
           f"{HONEST_EVERY_S * 1000:.0f} ms from 127.0.0.1 | quiet | {quiet['ok']}/"
           f"{quiet['requests']} answered; p50 / p99 {quiet['p50_ms']:.1f} / "
           f"{quiet['p99_ms']:.1f} ms; RSS {fig['quiet_rss_mib']:.0f} MiB | header limit "
           f"{limits['header_s']:.0f} s, keep-alive {limits['keep_alive_s']:.0f} s; peak RSS "
           f"over the run {fig['peak_rss_mib']:.0f} MiB | |"]
    for name, phase in fig["phases"].items():
        honest = phase["honest"]
        ratio = honest["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] > 0 else float("inf")
        failures = f" (failures: {', '.join(honest['failures'])})" if honest["failures"] else ""
        met = honest["success"] == 1 and phase["peak_rss_mib"] < 300
        out.append(f"| | {name} | {honest['ok']}/{honest['requests']} answered{failures}; "
                   f"p99 {honest['p99_ms']:.0f} ms ({ratio:.1f}x quiet); peak RSS "
                   f"{phase['peak_rss_mib']:.0f} MiB | {_seen(phase['seen'])} | 100 % and "
                   f"< 300 MiB: {_ok(met)} |")
    return out


def default_limits() -> dict[str, float]:
    """The door's limits the service runs with (the defaults, or this environment's)."""
    from router_service import ServiceLimits

    limits = ServiceLimits.from_env(os.environ)
    return {"header_s": limits.header_timeout_s, "keep_alive_s": limits.keep_alive_s}


def _ok(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _plain_uvicorn(port: int) -> None:
    """The same app on plain uvicorn, as before the door (the baseline)."""
    import uvicorn

    from bench.app import app

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop",
                http="httptools", lifespan="on", backlog=2048, timeout_keep_alive=5,
                limit_concurrency=2_000)


def main() -> None:
    """Run the bench (or serve the plain-uvicorn baseline) and print its rows."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["door", "uvicorn", "hypercorn", "granian"],
                        default="door")
    parser.add_argument("--quiet-s", type=float, default=20.0)
    parser.add_argument("--plain-uvicorn", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--honest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_uvicorn:
        _plain_uvicorn(args.plain_uvicorn)
        return
    if args.honest:
        honest = Honest(args.honest).start()
        sys.stdin.read()  # until the bench closes our stdin
        sys.stdout.write(json.dumps(honest.stop()))
        return
    fig = hostile(args.server, args.quiet_s)
    sys.stdout.write(json.dumps(fig, indent=1) + "\n" + "\n".join(rows(fig, default_limits()))
                     + "\n")


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
