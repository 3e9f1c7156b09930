"""The start-up self-check of llama.cpp, run in a child process before the engine is chosen.

llama.cpp's kernels are native code: a build that uses an instruction this CPU lacks, or one
the host reports but does not hand to threads (AMX tiles on some cloud hosts), dies by SIGILL
on the first decode: an engine that would die on every request. So the first decode happens
in a child (`ai_space.llama.probe`, which runs llama-server and dies by the signal it died
by): if it fails, ENGINE=auto serves with transformers instead, and ENGINE=llama.cpp refuses
to start.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The probe loads a 135M model and decodes a few tokens in about a second (plus about 3 s the
# first time, when it derives the served weights); a larger model, a cold page cache and a
# busy host take longer, and a hung child must not hold the start.
PROBE_TIMEOUT_S = 180.0
PROBE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "ai_space.llama.probe")


@dataclass(frozen=True)
class ProbeResult:
    """What the child did: passed, or how it failed, in words fit for a log line."""

    ok: bool
    detail: str


def run_probe(gguf: Path, *, threads: int, kv_type: str, model_id: str = "",
              weights: str = "file", command: Sequence[str] = PROBE_COMMAND,
              timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Run `command GGUF THREADS KV_TYPE MODEL_ID WEIGHTS`; judge it by how it ended."""
    started = time.perf_counter()
    try:
        child = subprocess.run([*command, str(gguf), str(threads), kv_type, model_id, weights],
                               capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"the probe did not finish within {timeout_s:.0f} s")
    except OSError as exc:
        return ProbeResult(False, f"the probe could not start ({exc.strerror})")
    took = time.perf_counter() - started
    code = child.returncode
    if code < 0:
        return ProbeResult(False, f"the probe died by {signal_name(-code)} after {took:.1f} s")
    if code != 0:
        last = (child.stderr.strip().splitlines() or ["no message"])[-1][:200]
        return ProbeResult(False, f"the probe exited with code {code}: {last}")
    try:
        report = json.loads(child.stdout.strip().splitlines()[-1])
        decoded = int(report["decoded"])
    except (IndexError, ValueError, KeyError, TypeError):
        return ProbeResult(False, "the probe exited without reporting a decode")
    return ProbeResult(True, f"decoded {decoded} tokens in a child in {took:.1f} s")


def signal_name(number: int) -> str:
    """A signal's name, with what it means for a llama.cpp build where that is known."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    words = {"SIGILL": "illegal instruction: this CPU cannot run this llama.cpp build",
             "SIGSEGV": "segmentation fault", "SIGBUS": "bus error", "SIGKILL": "killed",
             "SIGABRT": "abort"}
    return f"{name} ({words[name]})" if name in words else name
