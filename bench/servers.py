"""Which server holds the door: uvicorn with our protocol, plain uvicorn, Hypercorn, Granian.

Each serves the same ASGI app (bench/app.py: the service's RouterService, keys required) in
front of bench/streaming.py's backend, and meets the same clients: bench/hostile.py's attacks
with one honest client, then bench/streaming.py's time to first token at concurrency
1 (added to the backend's own). Granian and Hypercorn are installed on first use into
`.venv-servers`, which also sees the project's venv.

    .venv/bin/python -m bench.servers [--streams 100] [--quiet-s 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.hostile import SERVERS_VENV, hostile, processes
from bench.streaming import latency

log = logging.getLogger("bench.servers")
GRANIAN, HYPERCORN = "granian==2.8.7", "hypercorn==0.18.0"
SERVERS = ("door", "uvicorn", "hypercorn", "granian")


def ensure_servers() -> str | None:
    """Make `.venv-servers` (Granian, Hypercorn) if needed; None, or why it cannot be had."""
    python = SERVERS_VENV / "bin" / "python"
    check = [str(python), "-c", "import granian, hypercorn, router_service"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return None
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(SERVERS_VENV)], check=True)
    site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    # The project's packages (router, uvicorn, httpx...) come from its own venv.
    (SERVERS_VENV / "lib" / "python3.11" / "site-packages" / "project-venv.pth").write_text(
        f"{site}\n")
    made = subprocess.run([str(python), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", GRANIAN, HYPERCORN],
                          capture_output=True, text=True, timeout=900)
    return None if made.returncode == 0 else f"pip failed: {made.stderr.strip()[-300:]}"


def compare(servers: tuple[str, ...], streams: int, quiet_s: float) -> dict[str, Any]:
    """Every server's figures: the hostile bench, then the added time to first token."""
    out: dict[str, Any] = {}
    for server in servers:
        log.info("%s: hostile clients", server)
        fig = hostile(server, quiet_s)
        log.info("%s: time to first token, %d streams", server, streams)
        with processes(server, keys=False) as (backend, function, _):
            lat = latency(backend, function, streams)
        fig["ttft_added_p50_ms"] = lat["service"]["ttft_p50"] - lat["direct"]["ttft_p50"]
        fig["ttft_added_p99_ms"] = lat["service"]["ttft_p99"] - lat["direct"]["ttft_p99"]
        out[server] = fig
    return out


def rows(figs: dict[str, Any]) -> list[str]:
    """One table row per server: the honest client over every attack of bench/hostile.py."""
    out = ["| server | honest client answered, all attacks | worst honest p99 (quiet) | "
           "peak RSS | idle / half-header / dripping sockets open, max | added TTFT p50 / p99 |",
           "|---|---|---|---|---|---|"]
    for server, fig in figs.items():
        phases = fig["phases"].values()
        ok = sum(phase["honest"]["ok"] for phase in phases)
        asked = sum(phase["honest"]["requests"] for phase in phases)
        worst = max(phase["honest"]["p99_ms"] for phase in phases)
        held = " / ".join(f"{phase['seen']['max_s']:.1f} s" for phase in list(phases)[:3])
        out.append(f"| {server} | {ok}/{asked} | {worst:.0f} ms ({fig['quiet']['p99_ms']:.0f}"
                   f" ms) | {fig['peak_rss_mib']:.0f} MiB | {held} | "
                   f"{fig['ttft_added_p50_ms']:+.2f} / {fig['ttft_added_p99_ms']:+.2f} ms |")
    return out


def main() -> None:
    """Install the candidates if needed, compare them, print the table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--quiet-s", type=float, default=10.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    servers = tuple(args.servers.split(","))
    why = ensure_servers()
    if why:
        log.warning("Granian and Hypercorn not measured: %s", why)
        servers = tuple(s for s in servers if s in ("door", "uvicorn"))
    figs = compare(servers, args.streams, args.quiet_s)
    sys.stdout.write(json.dumps(figs, indent=1) + "\n" + "\n".join(rows(figs)) + "\n")


if __name__ == "__main__":
    main()
