"""The worker's CPU engines side by side, in one run, on the same GGUF and thread count.

For llama.cpp's own generate loop (llama-cpp-python's `Llama`, one request at a time) and for
`python -m ai_space` with ENGINE=llama.cpp and ENGINE=transformers (bf16 where the CPU has
avx512_bf16, else fp32): single-stream tok/s, time to first token, aggregate tok/s at 4 and 16
concurrent requests, and the server's peak RSS with chat and embeddings both used; then top-1
agreement with the fp32 reference (bench/engine_quality.py).

    .venv/bin/python -m bench.engines [--threads 2] [--max-tokens 128] [--out bench/engines.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.ai_space_bench import PROMPTS, TOKEN, _peak_rss_mib, _start
from bench.common import ROOT, free_port, load, machine

log = logging.getLogger("bench")
LEVELS = (4, 16)
# A request that should run to max_tokens (greedy): throughput is tokens over wall time.
LONG = "Write a long, detailed story about a lighthouse keeper and a storm."


class _Loop:
    """llama.cpp's own loop in a child process: Llama.create_chat_completion, greedy, one
    request at a time. Each `run()` is one answer, so its runs can alternate with the server's
    and both meet the same moments of a shared machine."""

    CODE = """
import json, sys, time
from llama_cpp import Llama
from ai_space.models.packaged import resolve
llm = Llama(str(resolve("pkg:smollm2", None).gguf_path), n_threads=int(sys.argv[1]),
            n_ctx=2048, verbose=False)
llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)
print("ready", flush=True)
for line in sys.stdin:
    started = time.perf_counter()
    out = llm.create_chat_completion([{"role": "user", "content": sys.argv[3]}],
                                     max_tokens=int(sys.argv[2]), temperature=0)
    print(out["usage"]["completion_tokens"] / (time.perf_counter() - started), flush=True)
"""

    def __init__(self, threads: int, max_tokens: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(threads), str(max_tokens), LONG], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        if self.process.stdin is None or self.process.stdout is None:
            raise RuntimeError("no pipes to llama.cpp's loop")
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.rates: list[float] = []
        if self.stdout.readline().strip() != "ready":
            raise RuntimeError("llama.cpp's loop did not start")

    def run(self) -> None:
        """One greedy answer; its tok/s is kept."""
        self.stdin.write("go\n")
        self.stdin.flush()
        self.rates.append(float(self.stdout.readline()))

    def close(self) -> None:
        """End the child process."""
        self.stdin.close()
        self.process.wait(60)
        self.stdout.close()


def _stream(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    """(completion tokens, seconds to the first token, seconds in all) of one streamed ask."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            elif not first and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
    return tokens, first, time.perf_counter() - started


def _server(engine: str, threads: int, max_tokens: int,
            loop: _Loop | None = None) -> dict[str, float]:
    """One server's figures. Single-stream figures are the best of 3 runs (the run least
    disturbed by other work on a shared machine), alternating with `loop`'s when given."""
    port = free_port()
    server = _start({"ENGINE": engine, "N_THREADS": str(threads), "MAX_CONCURRENCY": "16",
                     "MAX_QUEUE": "64", "MAX_TOKENS": str(max_tokens), "DEVICE": "cpu",
                     "MODEL_ID": "pkg:smollm2", "EMBEDDING_MODEL_ID": "pkg:minilm"}, port)
    try:
        figures: dict[str, float] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900,
                          headers={"Authorization": f"Bearer {TOKEN}"},
                          limits=httpx.Limits(max_connections=32)) as client:
            client.post("/v1/embeddings", json={"input": PROMPTS * 8}).raise_for_status()
            _stream(client, "hi", 4)  # warm-up
            runs = []
            for _ in range(3):
                if loop is not None:
                    loop.run()
                runs.append(_stream(client, LONG, max_tokens))
            figures["single_tok_s"] = max(r[0] / r[2] for r in runs)
            figures["ttft_ms"] = 1000 * sorted(r[1] for r in runs)[1]
            for level in LEVELS:
                prompts = [LONG if i % 2 else PROMPTS[i % len(PROMPTS)]
                           for i in range(level * 2)]
                started = time.perf_counter()
                with ThreadPoolExecutor(level) as pool:
                    done = list(pool.map(lambda p: _stream(client, p, max_tokens), prompts))
                figures[f"c{level}_tok_s"] = sum(d[0] for d in done) / \
                    (time.perf_counter() - started)
            client.post("/v1/embeddings", json={"input": PROMPTS * 8}).raise_for_status()
        figures["peak_rss_mib"] = _peak_rss_mib(server.pid)
        return figures
    finally:
        server.terminate()
        server.wait(30)


def _quality(threads: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.engine_quality", str(threads)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _ok(met: bool) -> str:
    return "**met**" if met else "**missed**"


def side_by_side(threads: int, max_tokens: int) -> dict[str, Any]:
    """Every figure of the comparison, measured now."""
    load_before = load()
    log.info("ai_space ENGINE=llama.cpp, alternating with llama.cpp's own loop")
    loop = _Loop(threads, max_tokens)
    try:
        servers = {"llama.cpp": _server("llama.cpp", threads, max_tokens, loop)}
    finally:
        loop.close()
    log.info("ai_space ENGINE=transformers")
    servers["transformers"] = _server("transformers", threads, max_tokens)
    log.info("quality")
    quality = _quality(threads)
    return {"threads": threads, "max_tokens": max_tokens, "load_before": load_before,
            "load_after": load(), "loop": {"tok_s": max(loop.rates)}, "servers": servers,
            "quality": quality}


def rows(result: dict[str, Any]) -> list[str]:
    """Markdown rows: one per engine, then the targets."""
    loop, servers, quality = result["loop"], result["servers"], result["quality"]
    llama = servers["llama.cpp"]
    lines = [
        f"Engines side by side (`python -m bench.engines`): {machine()}, SmolLM2-135M Q4_1 GGUF, "
        f"{result['threads']} threads each, greedy, max {result['max_tokens']} new tokens; "
        f"load average {result['load_before']} before, {result['load_after']} after.",
        "",
        "| engine | single stream | first token | 4 concurrent | 16 concurrent | peak RSS "
        "(chat + embeddings) | top-1 agreement with fp32 |",
        "|---|---|---|---|---|---|---|",
        f"| llama.cpp's own loop (`Llama`, one at a time) | {loop['tok_s']:.1f} tok/s | | | | "
        f"| {quality['llama.cpp']:.1%} |",
    ]
    for engine, fig in servers.items():
        agree = quality["llama.cpp"] if engine == "llama.cpp" else quality["transformers bf16"]
        label = "ai_space ENGINE=llama.cpp" if engine == "llama.cpp" else \
            "ai_space ENGINE=transformers (bf16 on avx512_bf16, else fp32)"
        lines.append(f"| {label} | {fig['single_tok_s']:.1f} tok/s | {fig['ttft_ms']:.0f} ms | "
                     f"{fig['c4_tok_s']:.1f} tok/s | {fig['c16_tok_s']:.1f} tok/s | "
                     f"{fig['peak_rss_mib']:.0f} MiB | {agree:.1%} |")
    ratio = loop["tok_s"] / llama["single_tok_s"]
    lines += [
        "",
        f"- single stream ≥ 90 tok/s and within 1.25x of the loop: {llama['single_tok_s']:.1f} "
        f"tok/s, loop/ai_space = {ratio:.2f}x: "
        f"{_ok(llama['single_tok_s'] >= 90 and ratio <= 1.25)}",
        f"- 16 concurrent ≥ the loop: {llama['c16_tok_s']:.1f} vs {loop['tok_s']:.1f} tok/s: "
        f"{_ok(llama['c16_tok_s'] >= loop['tok_s'])}",
        f"- whole worker ≤ 512 MiB: {llama['peak_rss_mib']:.0f} MiB: "
        f"{_ok(llama['peak_rss_mib'] <= 512)}",
        f"- top-1 agreement ≥ 95% over {quality['tokens']:.0f} held-out tokens: "
        f"{quality['llama.cpp']:.1%}: {_ok(quality['llama.cpp'] >= 0.95)}",
    ]
    return lines


def bench_rows(result: dict[str, Any]) -> list[str]:
    """The same figures as rows of `make bench`'s table (benchmark, case, result, baseline,
    target)."""
    loop, servers, quality = result["loop"], result["servers"], result["quality"]
    llama = servers["llama.cpp"]
    ratio = loop["tok_s"] / llama["single_tok_s"]
    head = (f"CPU engines, SmolLM2-135M Q4_1 GGUF, {result['threads']} threads each, greedy, "
            f"max {result['max_tokens']} tokens (bench/engines.py)")
    out = [f"| {head} | llama.cpp's own loop (`Llama`, one at a time) | {loop['tok_s']:.1f} "
           f"tok/s | the baseline | |"]
    for engine, fig in servers.items():
        target = ""
        if engine == "llama.cpp":
            target = (f"single ≥ 90 tok/s and ≤ 1.25x slower than the loop: "
                      f"{_ok(fig['single_tok_s'] >= 90 and ratio <= 1.25)}; 16 concurrent ≥ "
                      f"the loop: {_ok(fig['c16_tok_s'] >= loop['tok_s'])}; RSS ≤ 512 MiB: "
                      f"{_ok(fig['peak_rss_mib'] <= 512)}")
        out.append(f"| | ai_space ENGINE={engine} | single {fig['single_tok_s']:.1f} tok/s, "
                   f"first token {fig['ttft_ms']:.0f} ms, 4 concurrent {fig['c4_tok_s']:.1f} "
                   f"tok/s, 16 concurrent {fig['c16_tok_s']:.1f} tok/s, peak RSS (chat + "
                   f"embeddings) {fig['peak_rss_mib']:.0f} MiB | single: loop / this = "
                   f"{loop['tok_s'] / fig['single_tok_s']:.2f}x | {target} |")
    out.append(f"| | top-1 agreement with transformers fp32, {quality['tokens']:.0f} held-out "
               f"tokens | llama.cpp {quality['llama.cpp']:.1%}, transformers bf16 "
               f"{quality['transformers bf16']:.1%} | | ≥ 95%: "
               f"{_ok(quality['llama.cpp'] >= 0.95)} |")
    return out


def main() -> None:
    """Run the comparison, print it, write it to --out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "bench" / "engines.md"))
    args = parser.parse_args()
    text = "\n".join(rows(side_by_side(args.threads, args.max_tokens))) + "\n"
    Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
