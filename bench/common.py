"""Helpers shared by the benchmarks: percentiles, machine load, and where things live."""

from __future__ import annotations

import os
import socket
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The alternatives live in their own environments, kept out of the project venv (gitignored by
# the `.venv-*/` pattern): LiteLLM in a Python venv, Portkey's gateway in an npm prefix.
LITELLM_VENV = ROOT / ".venv-litellm"
PORTKEY_PREFIX = ROOT / ".venv-portkey"
LITELLM_VERSION = "1.110.2"
PORTKEY_VERSION = "1.15.2"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    """The median of `values`."""
    return statistics.median(values)


def load() -> str:
    """The 1-minute load average, to print beside the figures."""
    return f"{os.getloadavg()[0]:.2f}"


def machine() -> str:
    """One line that says where the figures come from."""
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a child process that binds its own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
