"""The worker through its front against the same llama-server bare, side by side in one run.

1. The front: `python -m ai_space` with ENGINE=llama.cpp and MODEL_ID=pkg:smollm2 (embeddings on
   too), which starts its own llama-server processes. The chat engine's command line and its
   LLAMA_ARG_* environment are read from /proc, so the bare side runs exactly that.
2. Bare: the same llama-server binary with the same arguments, on another port.
3. Run by run, alternating sides so both meet the same moments of a shared machine: one stream
   (median of 3) and 16 concurrent requests (best of 2), 128 tokens each, greedy, tok/s from the
   answers' usage; peak RSS of the front with its engines (chat and embeddings both used, the
   sum of each process's VmHWM) and of the bare server.
4. The target: front / bare >= 0.95 at 1 and at 16. The old engine's figures (issue 23's
   table, ctypes engine in the worker) are printed beside them, for the record.

`--bare-both` runs a bare server on both sides (the harness, before the front runs on
llama-server); `--formats q8_0,file,q4_0` also measures the bare server on each weight format.

    .venv/bin/python -m bench.engines [--threads 2] [--max-tokens 128] [--bare-both]
        [--formats q8_0,file,q4_0] [--out bench/engines.md] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.ai_space_bench import PROMPTS, TOKEN, _start
from bench.common import ROOT, free_port, load, machine

log = logging.getLogger("bench")
# Greedy, this request runs to the token limit.
LONG = "Write a long, detailed story about a lighthouse keeper and a storm."
CACHE = ROOT / "build" / "bench-gguf"
TARGET = 0.95
# Issue 23's table: the ctypes engine in the worker (before), measured on a 2-core AMD EPYC,
# 2 threads, Q8_0, 128 tokens; not measured by this run.
OLD_ENGINE = [
    ("the worker before (`python -m ai_space`, ctypes engine, AVX2 build)", "108–126",
     "197–213", "414 (chat and embeddings)"),
    ("the same worker with AVX-512 kernels loaded", "124–125", "227–240", "414"),
    ("llama.cpp's `llama-server`, AVX2 kernels", "122", "308", "302 (chat only)"),
    ("`llama-server`, AVX-512 kernels", "119–121", "350–379", "302"),
]


@dataclass
class Side:
    """One server under test: where to reach it and which processes count for its memory."""

    name: str
    url: str
    headers: dict[str, str]
    process: subprocess.Popen[bytes]
    embeddings: bool = False
    runs: dict[str, list[float]] = field(default_factory=lambda: {"1": [], "16": []})


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *_children(int(child))]
    return out


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib(pid: int) -> float:
    """Peak RSS of a process and its descendants (the sum of each one's VmHWM)."""
    return sum(_hwm_mib(p) for p in [pid, *_children(pid)])


def chat_engine(front_pid: int) -> tuple[list[str], dict[str, str]]:
    """The front's chat llama-server (or the process itself when it is one): its argv and
    LLAMA_ARG_* environment."""
    for pid in [front_pid, *_children(front_pid)]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        if argv and Path(argv[0]).name == "llama-server" and not any(
                a.startswith("--embedding") for a in argv):
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
            env = dict(e.split("=", 1) for e in environ if e.startswith("LLAMA_ARG_"))
            return argv, env
    raise RuntimeError("the front runs no chat llama-server")


# Where and to whom the server listens: set per side, not compared.
_LISTEN = {"--host", "--port", "--api-key", "--api-key-file"}
_LISTEN_ENV = {"LLAMA_ARG_HOST", "LLAMA_ARG_PORT", "LLAMA_ARG_API_KEY", "LLAMA_ARG_API_KEY_FILE"}


def rebind(argv: list[str], env: dict[str, str], port: int) -> tuple[list[str], dict[str, str]]:
    """The same command line and environment, listening on 127.0.0.1:`port` with no key (the
    front's engine may listen on a socket of its own, with a key file only it can read)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _LISTEN:
            skip = True
        elif arg.split("=", 1)[0] not in _LISTEN:
            out.append(arg)
    kept = {k: v for k, v in env.items() if k not in _LISTEN_ENV}
    return [*out, "--host", "127.0.0.1", "--port", str(port)], kept


def bare_argv(weights: Path, threads: int, port: int) -> list[str]:
    """llama-server set up as the issue asks for the worker's chat (16 slots over one q8_0 KV
    cache, no host prompt cache, metrics on), for when no front runs it."""
    from ai_space.llama.variants import engine_binary

    return [str(engine_binary()), "--model", str(weights), "--threads", str(threads),
            "--threads-batch", str(threads), "--parallel", "16", "--ctx-size", "8192",
            "--kv-unified", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
            "--flash-attn", "on", "--cache-ram", "0", "--metrics", "--no-webui", "--jinja",
            "--host", "127.0.0.1", "--port", str(port)]


def _ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited during start-up ({process.returncode})")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling the condition above
    raise RuntimeError(f"{url} was not ready in {timeout:.0f} s")


def start_bare(argv: list[str], env: dict[str, str], name: str = "bare") -> Side:
    """Start llama-server with `argv` (from its own folder, where ggml finds its CPU library)."""
    port = int(argv[argv.index("--port") + 1])
    process = subprocess.Popen(argv, cwd=Path(argv[0]).parent, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _ready(url, process)
    return Side(name, url, {}, process)


def start_front(threads: int, tokens: int) -> Side:
    """`python -m ai_space` on llama.cpp, chat and embeddings."""
    port = free_port()
    process = _start({"ENGINE": "llama.cpp", "N_THREADS": str(threads), "MAX_CONCURRENCY": "16",
                      "MAX_QUEUE": "64", "MAX_TOKENS": str(tokens), "DEVICE": "cpu",
                      "MODEL_ID": "pkg:smollm2", "EMBEDDING_MODEL_ID": "pkg:minilm"}, port)
    return Side("front", f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"},
                process, embeddings=True)


def _stream(client: httpx.Client, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) of one streamed greedy request for LONG."""
    started = time.perf_counter()
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": LONG}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
    return tokens, time.perf_counter() - started


def rate(client: httpx.Client, streams: int, max_tokens: int) -> float:
    """Aggregate tok/s of `streams` concurrent requests."""
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        done = list(pool.map(lambda _: _stream(client, max_tokens), range(streams)))
    return sum(d[0] for d in done) / (time.perf_counter() - started)


def measure(sides: list[Side], tokens: int, embed: Callable[[Side], None]) -> dict[str, Any]:
    """Alternate the sides run by run; the median of 3 single streams, the best of 2 crowds."""
    # A fresh connection per request, on both sides: llama-server (cpp-httplib) drops a kept-alive
    # connection after a streamed answer, and the next request on it fails unanswered.
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=0)
    clients = {s.name: httpx.Client(base_url=s.url, headers=s.headers, timeout=900,
                                    limits=limits) for s in sides}
    try:
        for side in sides:
            embed(side)
            _stream(clients[side.name], 4)  # warm-up
        log.info("one stream, 3 rounds: %s", ", ".join(s.name for s in sides))
        for _ in range(3):
            for side in sides:
                side.runs["1"].append(rate(clients[side.name], 1, tokens))
        log.info("16 concurrent, 2 rounds")
        for _ in range(2):
            for side in sides:
                side.runs["16"].append(rate(clients[side.name], 16, tokens))
        for side in sides:
            embed(side)
    finally:
        for client in clients.values():
            client.close()
    return {s.name: {"1": statistics.median(s.runs["1"]), "16": max(s.runs["16"]),
                     "runs": s.runs, "peak_rss_mib": peak_rss_mib(s.process.pid)}
            for s in sides}


def _stop(side: Side) -> None:
    side.process.terminate()
    side.process.wait(30)


def _embed(side: Side) -> None:
    # Use the embeddings model too, so the front's peak RSS includes it serving.
    if side.embeddings:
        httpx.post(f"{side.url}/v1/embeddings", headers=side.headers, timeout=120,
                   json={"input": PROMPTS * 8}).raise_for_status()


def _weights(fmt: str) -> Path:
    from ai_space.llama.weights import chat_weights
    from ai_space.models.packaged import resolve

    source = resolve("pkg:smollm2", None).gguf_path
    assert source is not None
    return chat_weights(source, fmt, cache=CACHE)


def shown(argv: list[str]) -> str:
    """The command line for the record: file names without their folders."""
    return " ".join(Path(arg).name if arg.startswith("/") else arg for arg in argv)


def front_vs_bare(threads: int, tokens: int, bare_both: bool) -> dict[str, Any]:
    """The front and the bare server, side by side."""
    if bare_both:
        front = start_bare(bare_argv(_weights("q8_0"), threads, free_port()), {}, "front")
    else:
        front = start_front(threads, tokens)
    try:
        argv, env = rebind(*chat_engine(front.process.pid), free_port())
        bare = start_bare(argv, env)
        try:
            figures = measure([front, bare], tokens, _embed)
        finally:
            _stop(bare)
    finally:
        _stop(front)
    return {"argv": shown(argv), "bare_both": bare_both, **figures}


def formats(names: list[str], threads: int, tokens: int) -> dict[str, Any]:
    """The bare server on each weight format, one after the other."""
    out = {}
    for fmt in names:
        side = start_bare(bare_argv(_weights(fmt), threads, free_port()), {}, fmt)
        try:
            out[fmt] = measure([side], tokens, _embed)[fmt]
        finally:
            _stop(side)
    return out


def rows(result: dict[str, Any]) -> list[str]:
    """bench/engines.md: front against bare, the old engine's figures, the formats."""
    fig, front_name = result["figures"], "bare llama-server (stand-in for the front)" \
        if result["figures"]["bare_both"] else "the worker through the front (`python -m ai_space`)"
    front, bare = fig["front"], fig["bare"]
    lines = [
        f"Measured by `python -m bench.engines` on {machine()}: {result['cpu']}; llama.cpp "
        f"variant loaded: {result['variant']}. SmolLM2-135M, {result['threads']} threads, "
        f"greedy, {result['max_tokens']} tokens a request; one stream: median of 3, 16 "
        f"concurrent: best of 2, alternating sides run by run; load average "
        f"{result['load_before']} before, {result['load_after']} after.",
        "",
        f"Engine command line (both sides): `{fig['argv']}`",
        "",
        "| engine | one stream | 16 concurrent | peak RSS |",
        "|---|---|---|---|",
        f"| {front_name} | {front['1']:.1f} tok/s | {front['16']:.1f} tok/s | "
        f"{front['peak_rss_mib']:.0f} MiB |",
        f"| the same `llama-server`, bare | {bare['1']:.1f} tok/s | {bare['16']:.1f} tok/s | "
        f"{bare['peak_rss_mib']:.0f} MiB |",
        "",
    ]
    for streams in ("1", "16"):
        ratio = front[streams] / bare[streams]
        lines.append(f"- front / bare at {streams} stream{'s' if streams != '1' else ''}: "
                     f"{ratio:.2f}x (target ≥ {TARGET}x): "
                     f"{'**met**' if ratio >= TARGET else '**missed**'}")
    lines += ["", "For the record, issue 23's figures for the engine this replaced (not measured "
              "by this run):", "", "| engine | one stream | 16 concurrent | peak RSS (MiB) |",
              "|---|---|---|---|", *[f"| {a} | {b} tok/s | {c} tok/s | {d} |"
                                     for a, b, c, d in OLD_ENGINE]]
    if result.get("formats"):
        lines += ["", "The bare server on each weight format (one after the other):", "",
                  "| weights | one stream | 16 concurrent | peak RSS |", "|---|---|---|---|"]
        for fmt, f in result["formats"].items():
            name = "Q4_1 (as shipped)" if fmt == "file" else f"{fmt.upper()} (from the Q4_1)"
            lines.append(f"| {name} | {f['1']:.1f} tok/s | {f['16']:.1f} tok/s | "
                         f"{f['peak_rss_mib']:.0f} MiB |")
    return lines


def cpu_line() -> str:
    """The CPU's model and the vector flags that matter to llama.cpp's kernels."""
    from ai_space.llama.variants import cpu_flags

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    return f"{model} ({' '.join(shown)})"


def side_by_side(threads: int, max_tokens: int, *, bare_both: bool = False,
                 weight_formats: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every figure of the comparison, measured now."""
    from ai_space.llama.variants import engine_binary

    result: dict[str, Any] = {"threads": threads, "max_tokens": max_tokens, "load_before": load(),
                              "cpu": cpu_line(), "variant": engine_binary().parent.name}
    result["figures"] = front_vs_bare(threads, max_tokens, bare_both)
    if weight_formats:
        result["formats"] = formats(list(weight_formats), threads, max_tokens)
    result["load_after"] = load()
    return result


def bench_rows(result: dict[str, Any]) -> list[str]:
    """The same figures as rows of `make bench`'s table (benchmark, case, result, baseline,
    target)."""
    fig = result["figures"]
    front, bare = fig["front"], fig["bare"]
    ratios = {n: front[n] / bare[n] for n in ("1", "16")}
    met = all(r >= TARGET for r in ratios.values())
    return [f"| the worker's engine, SmolLM2-135M, {result['threads']} threads, "
            f"{result['max_tokens']} tokens (bench/engines.py; {result['cpu']}; variant "
            f"{result['variant']}) | "
            f"{'bare stand-in' if fig['bare_both'] else 'through the front'} against the same "
            f"llama-server bare | 1 stream {front['1']:.1f} tok/s, 16 concurrent "
            f"{front['16']:.1f} tok/s, peak RSS {front['peak_rss_mib']:.0f} MiB | "
            f"{ratios['1']:.2f}x and {ratios['16']:.2f}x of bare ({bare['1']:.1f} and "
            f"{bare['16']:.1f} tok/s) | ≥ {TARGET}x: {'**met**' if met else '**missed**'} |"]


def main() -> None:
    """Run the comparison, print it, write it to --out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--bare-both", action="store_true",
                        help="a bare llama-server on both sides (tests the harness)")
    parser.add_argument("--formats", default="", help="e.g. q8_0,file,q4_0")
    parser.add_argument("--out", default=str(ROOT / "bench" / "engines.md"))
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    result = side_by_side(args.threads, args.max_tokens, bare_both=args.bare_both,
                          weight_formats=tuple(filter(None, args.formats.split(","))))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    text = "\n".join(rows(result)) + "\n"
    Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
