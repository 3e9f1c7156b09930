"""The service's door under hostile clients (issue 19), while one honest client keeps asking.

Three processes: the bench backend (bench/streaming.py's, JSON after 20 ms), the service in
front of it (`python -m router_service`, keys required, its default door limits unless the
environment sets them), and this client. The honest client sends one authenticated chat request
a second, each on a new connection, from 127.0.0.1: first alone (its quiet p99), then through
the attacks, which come from other loopback addresses, one after another:

1. 2,000 connections that send nothing (one address: the issue's attacker);
2. 2,000 that stop halfway through their headers;
3. 300 authenticated bodies that drip one byte a second;
4. 600 unauthenticated 200 KB bodies (the credential must be checked before the body).

It prints the honest client's success rate and p99 beside its quiet p99, the service's peak
RSS (VmHWM), and how long the attackers' sockets stayed open (from connect until the service
closed them), beside the configured limits.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, free_port, pct

API_KEY = "hostile-bench-key-0123456789"
IDLE, HALF, SLOW, UNAUTH = 2_000, 2_000, 300, 600
UNAUTH_BYTES = 200_000
CHAT = {"model": "small", "stream": False, "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]}
# The attackers' source addresses (all of 127/8 is loopback on Linux); the honest client
# uses 127.0.0.1.
ATTACKER = "127.0.0.2"
# Granian and Hypercorn, for bench/servers.py: a venv of their own that sees the project's.
SERVERS_VENV = ROOT / ".venv-servers"
# How long an attacker holds a socket the server never closes (plain uvicorn's case).
HOLD_S = 20.0


def _raise_fd_limit(wanted: int = 16_384) -> int:
    # 2,000 attacker sockets here and as many in the service: past the usual soft 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _peak_rss_mib(pid: int) -> float:
    """The peak RSS (VmHWM) of a process plus its children's: Granian serves from a worker
    process, so the parent's alone would miss the app."""
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _parent(p) == pid]
    total = 0.0
    for each in pids:
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))
    return total / 1024


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


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
    """One authenticated chat request a second, each on a new connection, on its own thread."""

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
            self._stop.wait(max(0.0, 1.0 - (time.perf_counter() - started)))

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


async def _open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _held(reader: asyncio.StreamReader, opened: float, limit_s: float) -> float:
    """Seconds from connect until the service closed the connection (or `limit_s`)."""
    try:
        async with asyncio.timeout(limit_s):
            while await reader.read(65_536):
                pass
    except (TimeoutError, ConnectionError):
        pass
    return time.monotonic() - opened


async def _attack(port: int, count: int, payload: bytes, *, drip: bytes = b"",
                  source: str = ATTACKER, hold_s: float = HOLD_S) -> list[float]:
    """Open `count` connections, send `payload` on each (then `drip`, a byte a second), and
    return how long each stayed open (`hold_s` at most: a server that never closes them)."""
    async def one() -> float:
        opened = time.monotonic()
        try:
            reader, writer = await _open(port, source)
        except OSError:
            return 0.0
        try:
            if payload:
                writer.write(payload)
            dripper = asyncio.create_task(_drip(writer, drip)) if drip else None
            held = await _held(reader, opened, hold_s)
            if dripper is not None:
                dripper.cancel()
            return held
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _drip(writer: asyncio.StreamWriter, body: bytes) -> None:
    for byte in body:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(1.0)  # the attack's pace, not a synchronisation


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in
                                                            headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _summary(held: list[float]) -> dict[str, float]:
    # Under 1 s: refused at once (the address's share), or answered and closed (401, 413).
    return {"n": len(held), "under_1s": sum(1 for h in held if h < 1), "p50_s": pct(held, 50),
            "max_s": max(held)}


def hostile(server: str = "door", quiet_s: float = 20.0) -> dict[str, Any]:
    """Every figure of the hostile bench."""
    fds = _raise_fd_limit()
    with processes(server) as (_, function, service):
        port = int(function.split(":")[2].split("/")[0])
        with Honest.elsewhere(function) as quiet_fig:
            time.sleep(quiet_s)  # the quiet phase's length, not a synchronisation
        with Honest.elsewhere(function) as under:
            phases = _phases(port, function)
        rss = _peak_rss_mib(service.pid)
    return {"server": server, "fd_limit": fds, "quiet": quiet_fig, "under_attack": under,
            "peak_rss_mib": rss, "held": {name: _summary(h) for name, h in phases.items()}}


def _phases(port: int, function: str) -> dict[str, list[float]]:
    path = function.split(str(port), 1)[1] + "/v1/chat/completions"
    body = json.dumps(CHAT).encode()
    half = _head(path, {"x-api-key": API_KEY, "content-type": "application/json"})
    slow = _head(path, {"x-api-key": API_KEY, "content-type": "application/json",
                        "content-length": str(len(body))})
    unauth = _head(path, {"content-type": "application/json",
                          "content-length": str(UNAUTH_BYTES)}) + b"x" * UNAUTH_BYTES
    return {
        f"{IDLE} idle connections": asyncio.run(_attack(port, IDLE, b"")),
        f"{HALF} half-sent headers": asyncio.run(_attack(port, HALF, half[:len(half) // 2])),
        f"{SLOW} bodies dripping a byte a second": asyncio.run(
            _attack(port, SLOW, slow, drip=body, source="127.0.0.3")),
        f"{UNAUTH} unauthenticated {UNAUTH_BYTES // 1000} KB bodies": asyncio.run(
            _attack(port, UNAUTH, unauth, source="127.0.0.4")),
    }


def rows(fig: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """The bench table's rows."""
    quiet, under = fig["quiet"], fig["under_attack"]
    header_s, keep_s = limits["header_s"], limits["keep_alive_s"]
    ratio = under["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] > 0 else float("inf")
    out = [
        f"| hostile clients ({fig['server']}), one honest request a second | success rate | "
        f"{under['ok']}/{under['requests']} ({under['success']:.0%}) | failures: "
        f"{', '.join(under['failures']) or 'none'} | 100 %: {_ok(under['success'] == 1)} |",
        f"| | honest p50 / p99 under attack | {under['p50_ms']:.1f} / {under['p99_ms']:.1f} ms "
        f"| quiet {quiet['p50_ms']:.1f} / {quiet['p99_ms']:.1f} ms ({quiet['requests']} "
        f"requests); p99 {ratio:.2f}x quiet | < 2x: {_ok(ratio < 2)} |",
        f"| | the service's peak RSS | {fig['peak_rss_mib']:.0f} MiB | VmHWM over the whole "
        f"run | < 300 MiB: {_ok(fig['peak_rss_mib'] < 300)} |",
    ]
    for name, held in fig["held"].items():
        bound = header_s + 1  # a dripped body's grace is the header limit, plus its bytes' time
        still = " (still open when the bench let go)" if held["max_s"] >= HOLD_S else ""
        out.append(f"| | {name}: socket open, p50 / max | {held['p50_s']:.2f} / "
                   f"{held['max_s']:.2f} s{still} | {held['under_1s']} closed within 1 s; header "
                   f"limit {header_s:.0f} s, keep-alive {keep_s:.0f} s | ≤ limit + 1 s: "
                   f"{_ok(held['max_s'] <= bound)} |")
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
