"""Throughput of the ai_space server: batched (MAX_CONCURRENCY=16) against one-at-a-time
(MAX_CONCURRENCY=1), at client concurrency 1, 4 and 16, plus the server's peak RSS.

Run:  .venv/bin/python -m bench.ai_space_bench --model tiny
      .venv/bin/python -m bench.ai_space_bench --model smollm2 --max-tokens 32
Each run starts `python -m ai_space` as a subprocess, so the RSS is the real worker's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger("ai_space.bench")
TOKEN = "bench-token"
PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Give me three tips for writing a freelance proposal.",
    "Explain what an API is to a child.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Name a famous painter and one of their works.",
    "Why is the sky blue?",
]


@dataclass(frozen=True)
class Result:
    """One load level's figures."""

    mode: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    p50_latency: float

    def row(self) -> str:
        """A table row."""
        return (f"| {self.mode:10} | {self.concurrency:3} | {self.requests:4} | "
                f"{self.tokens / self.seconds:8.1f} | {self.requests / self.seconds:6.2f} | "
                f"{self.p50_latency:6.2f} |")


def _start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "API_TOKEN": TOKEN, "PORT": str(port), "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "ai_space"], env=full,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise RuntimeError("server exited during startup")
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("server did not become ready")


def _ask(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0})
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"]), time.perf_counter() - started


def _level(port: int, mode: str, concurrency: int, max_tokens: int, rounds: int) -> Result:
    requests = concurrency * rounds
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                      headers={"Authorization": f"Bearer {TOKEN}"},
                      limits=httpx.Limits(max_connections=concurrency)) as client:
        _ask(client, PROMPTS[0], 4)  # warm-up: first-call allocations are not throughput
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            done = list(pool.map(lambda p: _ask(client, p, max_tokens), prompts))
        seconds = time.perf_counter() - started
    return Result(mode, concurrency, requests, sum(t for t, _ in done), seconds,
                  statistics.median(latency for _, latency in done))


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _embed(port: int) -> None:
    # Exercise the embedding model too, so the worker's peak RSS includes it serving.
    httpx.post(f"http://127.0.0.1:{port}/v1/embeddings",
               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120,
               json={"input": PROMPTS * 8}).raise_for_status()


def run(env: dict[str, str], max_tokens: int, rounds: int, levels: list[int]) -> None:
    """Benchmark one model: sequential then batched server, each at every level."""
    results = []
    for mode, slots in (("sequential", 1), ("batched", max(levels))):
        port = 18_000 + slots
        server = _start({**env, "MAX_CONCURRENCY": str(slots), "MAX_QUEUE": "64",
                         "MAX_TOKENS": str(max_tokens)}, port)
        try:
            if env.get("EMBEDDING_MODEL_ID", "pkg:minilm") != "none":
                _embed(port)
            for concurrency in levels:
                results.append(_level(port, mode, concurrency, max_tokens, rounds))
                log.info("%s", results[-1].row())
            log.info("%s server peak RSS: %.0f MiB", mode, _peak_rss_mib(server.pid))
        finally:
            server.terminate()
            server.wait(30)
    print("| mode       |   c | reqs |    tok/s |  req/s | p50 s |")
    print("|------------|-----|------|----------|--------|-------|")
    for result in results:
        print(result.row())


def main() -> None:
    """Parse arguments and run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--levels", default="1,4,16")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.model == "smollm2":
        run({"MODEL_ID": "pkg:smollm2", "EMBEDDING_MODEL_ID": "pkg:minilm"}, args.max_tokens,
            args.rounds, levels)
        return
    from tests.ai_space.tiny_models import build_chat_model, build_embedding_model

    with tempfile.TemporaryDirectory() as tmp:
        chat = build_chat_model(Path(tmp) / "chat")
        embed = build_embedding_model(Path(tmp) / "embed")
        run({"MODEL_ID": str(chat), "EMBEDDING_MODEL_ID": str(embed)}, args.max_tokens,
            args.rounds, levels)


if __name__ == "__main__":
    main()
