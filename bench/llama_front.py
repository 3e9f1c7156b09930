"""A first figure for the llama.cpp front (issue 23): the worker through its front against the
same llama-server bare, with the same arguments, side by side in one run.

    .venv/bin/python -m bench.llama_front [--threads 1] [--rounds 2] [--max-tokens 128]

Prints, with the machine's load average before and after:
- ready time: `python -m ai_space` (ENGINE=llama.cpp, chat and embeddings) from start to
  /health 200, with the weights already cached (a first start fills the cache, untimed);
- peak RSS: the front's and both engines' VmHWM, summed, after embeddings and 16 concurrent
  chats;
- tokens/s at 1 and 16 concurrent streams (greedy, each request made to run `--max-tokens`
  by banning the end-of-turn token), front and bare alternating, best of `--rounds`.
bench/engines.py is the full comparison; this is the front's own check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from ai_space.config import Settings
from ai_space.llama.launch import chat_command
from ai_space.llama.process import EngineProcess
from ai_space.llama.variants import engine_binary
from ai_space.llama.weights import chat_weights, weights_for
from ai_space.models.packaged import resolve

TOKEN = "bench-front-token"
PROMPT = "Tell me a long story about a lighthouse keeper."


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def _load(client: httpx.AsyncClient, path: str, headers: dict[str, str], streams: int,
                max_tokens: int) -> float:
    """tok/s of `streams` concurrent streamed requests, each generating max_tokens."""
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "logit_bias": {"2": -100}}

    async def one() -> int:
        tokens = 0
        async with client.stream("POST", path, json=body, headers=headers) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    event = json.loads(line[6:])
                    if not event.get("choices"):
                        tokens = int(event["usage"]["completion_tokens"])
        return tokens

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(one() for _ in range(streams))))
    return total / (time.perf_counter() - started)


def _worker(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ai_space"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{env['PORT']}/health"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the bare engine's own lines are not figures
    load_before = os.getloadavg()
    env = {**os.environ, "API_TOKEN": TOKEN, "ENGINE": "llama.cpp", "HOST": "127.0.0.1",
           "PORT": "18931", "MAX_CONCURRENCY": "16", "MAX_TOKENS": str(args.max_tokens),
           "N_THREADS": str(args.threads), "LOG_LEVEL": "warning"}
    first, _ = _worker(env)  # fills GGUF_CACHE (weights, MiniLM's GGUF)
    first.terminate()
    first.wait(30)
    worker, ready_s = _worker(env)
    settings = Settings(api_token=SecretStr(TOKEN), max_concurrency=16,
                        max_tokens=args.max_tokens, n_threads=args.threads)
    source = resolve(settings.model_id, None).gguf_path
    assert source is not None
    model = chat_weights(source, weights_for(settings.model_id, settings.weights))
    bare = EngineProcess("bare", chat_command(engine_binary(), model, settings, args.threads))
    results: dict[tuple[str, int], float] = {}
    try:
        async def measure() -> None:
            front = httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['PORT']}", timeout=600,
                                      limits=httpx.Limits(max_connections=32))
            direct = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(
                uds=str(bare.socket), limits=httpx.Limits(max_connections=32)),
                base_url="http://engine", timeout=600)
            await front.post("/v1/embeddings", json={"input": [PROMPT] * 32},
                             headers={"Authorization": f"Bearer {TOKEN}"})
            for streams in (1, 16):
                for _ in range(args.rounds):
                    for name, client, headers in (
                            ("front", front, {"Authorization": f"Bearer {TOKEN}"}),
                            ("bare", direct, {"Authorization": f"Bearer {bare.key}"})):
                        rate = await _load(client, "/v1/chat/completions", headers, streams,
                                           args.max_tokens)
                        results[name, streams] = max(results.get((name, streams), 0.0), rate)
            await front.aclose()
            await direct.aclose()

        bare.start()
        asyncio.run(measure())
        pids = [worker.pid, *_children(worker.pid)]
        peak_mib = sum(_peak_kib(p) for p in pids) / 1024
    finally:
        bare.stop()
        worker.terminate()
        worker.wait(30)
    load_after = os.getloadavg()
    lines: list[Any] = [
        f"llama-server {engine_binary()}, {args.threads} thread(s), weights {model.name}, "
        f"{args.max_tokens} tokens a request, best of {args.rounds}",
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}",
        f"ready with cached weights: {ready_s:.2f} s (target <= 5 s)",
        f"peak RSS, front + chat engine + embeddings engine ({len(pids)} processes), "
        f"chat and embeddings used: {peak_mib:.0f} MiB (target <= 512 MiB)"]
    for streams in (1, 16):
        front_rate, bare_rate = results["front", streams], results["bare", streams]
        lines.append(f"{streams:>2} concurrent: front {front_rate:.1f} tok/s, bare "
                     f"{bare_rate:.1f} tok/s, front/bare {front_rate / bare_rate:.2f}x "
                     f"(target >= 0.95x)")
    sys.stdout.write("\n".join(str(line) for line in lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
