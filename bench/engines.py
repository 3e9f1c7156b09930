"""The worker's llama.cpp setup chosen by measurement, then held to llama.cpp's own loop.

1. Every candidate weight format (the shipped Q4_1 file; Q8_0, Q4_0 and IQ4_NL re-quantised
   from it, as ai_space/llama/weights.py makes them), with the CPU backend's repacking on and
   off, KV cache q8_0 (and f16 for the formats at the quality bar): llama.cpp's own batched
   loop (bench/engine_loop.py, each case in a fresh process) at 1 and 16 streams, its peak
   RSS, and its top-1 agreement with the fp32 reference on held-out text.
2. The choice: the fastest (geometric mean of the 1- and 16-stream rates) of the cases at
   the quality bar (top-1 agreement >= 95%) with a q8_0 KV cache (f16's does not fit the
   worker's 512 MiB at N_CTX=8192).
3. That setup through `python -m ai_space` over HTTP, alternating run by run with llama.cpp's
   own loop on the same weights, so both meet the same moments of a shared machine: one
   stream, and 16 concurrent requests against the loop's 16-sequence batch; the server's
   peak RSS with chat and embeddings both used.
4. What sampling costs the decode thread at 16 streams: one request at a time against one
   batch pass, on real logits.

    .venv/bin/python -m bench.engines [--threads 2] [--max-tokens 128] [--reps 3]
        [--out bench/engines.md] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
FORMATS = ("file", "q8_0", "q4_0", "iq4_nl")
KV_TYPES = ("q8_0", "f16")
QUALITY_BAR = 0.95
# Greedy, this request runs to the token limit (the loop sends the same prompt).
LONG = "Write a long, detailed story about a lighthouse keeper and a storm."
CACHE = ROOT / "build" / "bench-gguf"


def _child(args: list[str], timeout: float = 1800) -> dict[str, Any]:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _weights() -> dict[str, Path]:
    """Each candidate format's file, derived once into the bench's own cache."""
    from ai_space.llama.weights import chat_weights
    from ai_space.models.packaged import resolve

    source = resolve("pkg:smollm2", None).gguf_path
    assert source is not None
    return {fmt: chat_weights(source, fmt, cache=CACHE) for fmt in FORMATS}


def matrix(threads: int, tokens: int, reps: int) -> list[dict[str, Any]]:
    """Every format x repack through llama.cpp's own loop, each in a fresh process; the
    other KV type for those at the quality bar."""
    paths = _weights()
    reference = CACHE / "reference.json"
    if not reference.is_file():
        out = subprocess.run([sys.executable, "-m", "bench.engine_quality", "--reference"],
                             cwd=ROOT, capture_output=True, text=True, timeout=900, check=True)
        reference.write_text(out.stdout.strip().splitlines()[-1])

    def run(fmt: str, repack: bool, kv: str) -> dict[str, Any]:
        log.info("loop: %s, repack %s, KV %s", fmt, "on" if repack else "off", kv)
        figures = _child(["-m", "bench.engine_loop", str(paths[fmt]), "--streams", "1,16",
                          "--tokens", str(tokens), "--threads", str(threads), "--kv", kv,
                          "--repack", str(int(repack)), "--reps", str(reps), "--reference",
                          str(reference)])
        return {"weights": fmt, "repack": repack, "kv": kv, **figures}

    # Every format with repacking on and off, on the server's default KV cache (q8_0); then
    # the other KV type for the formats that pass the quality bar.
    cases = [run(fmt, repack, KV_TYPES[0]) for fmt in FORMATS for repack in (True, False)]
    for case in list(cases):
        if case["agreement"] >= QUALITY_BAR:
            cases.append(run(case["weights"], case["repack"], KV_TYPES[1]))
    return cases


def choose(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest case at the quality bar, with the KV cache the memory budget allows."""
    # An f16 KV cache takes 23 KB a token against q8_0's 12: at the worker's N_CTX (8192)
    # that is 88 MiB more, and the whole worker measured 516 MiB with it, over the 512 MiB
    # instance. So f16 is measured, for the record, but not a choice.
    good = [c for c in cases if c["agreement"] >= QUALITY_BAR and c["kv"] == KV_TYPES[0]]
    if not good:
        raise RuntimeError("no candidate reaches the quality bar")
    return max(good, key=lambda c: math.sqrt(c["s1_tok_s"] * c["s16_tok_s"]))


class _Loop:
    """llama.cpp's own loop, loaded once in a child, run on demand (bench.engine_loop --serve)."""

    def __init__(self, path: Path, case: dict[str, Any], threads: int, tokens: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.engine_loop", str(path), "--serve", "--streams",
             "1,16", "--tokens", str(tokens), "--threads", str(threads), "--kv", case["kv"],
             "--repack", str(int(case["repack"]))], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self.process.stdin is None or self.process.stdout is None:
            raise RuntimeError("no pipes to llama.cpp's loop")
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        if self.stdout.readline().strip() != "ready":
            raise RuntimeError("llama.cpp's loop did not start")

    def run(self, streams: int) -> float:
        """One run of `streams` sequences; its tok/s."""
        self.stdin.write(f"{streams}\n")
        self.stdin.flush()
        figures = json.loads(self.stdout.readline())
        return float(figures["tokens"]) / float(figures["seconds"])

    def close(self) -> None:
        """End the child process."""
        self.stdin.close()
        self.process.wait(60)
        self.stdout.close()


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


def _crowd(client: httpx.Client, streams: int, max_tokens: int) -> float:
    """Aggregate tok/s of `streams` concurrent requests."""
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        done = list(pool.map(lambda _: _stream(client, max_tokens), range(streams)))
    return sum(d[0] for d in done) / (time.perf_counter() - started)


def through_http(case: dict[str, Any], path: Path, threads: int, tokens: int,
                 reps: int) -> dict[str, Any]:
    """The chosen setup served by ai_space, alternating with the loop on the same weights."""
    loop = _Loop(path, case, threads, tokens)
    port = free_port()
    server = _start({"ENGINE": "llama.cpp", "N_THREADS": str(threads), "MAX_CONCURRENCY": "16",
                     "MAX_QUEUE": "64", "MAX_TOKENS": str(tokens), "DEVICE": "cpu",
                     "MODEL_ID": "pkg:smollm2", "EMBEDDING_MODEL_ID": "pkg:minilm",
                     "WEIGHTS": case["weights"], "REPACK": "1" if case["repack"] else "0",
                     "KV_TYPE": case["kv"], "GGUF_CACHE": str(CACHE)}, port)
    runs: dict[str, list[float]] = {"loop_1": [], "http_1": [], "loop_16": [], "http_16": []}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900,
                          headers={"Authorization": f"Bearer {TOKEN}"},
                          limits=httpx.Limits(max_connections=32)) as client:
            client.post("/v1/embeddings", json={"input": PROMPTS * 8}).raise_for_status()
            _stream(client, 4)  # warm-up
            for _ in range(reps):
                runs["loop_1"].append(loop.run(1))
                made, seconds = _stream(client, tokens)
                runs["http_1"].append(made / seconds)
            for _ in range(reps):
                runs["loop_16"].append(loop.run(16))
                runs["http_16"].append(_crowd(client, 16, tokens))
            client.post("/v1/embeddings", json={"input": PROMPTS * 8}).raise_for_status()
        rss = _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        loop.close()
    best = {key: max(values) for key, values in runs.items()}
    return {**best, "runs": runs, "server_peak_rss_mib": rss}


def cpu_line() -> str:
    """The CPU's model and the vector flags that matter to llama.cpp's kernels."""
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    shown = [f for f in ("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16",
                         "amx_tile", "amx_int8", "amx_bf16") if f in flags]
    amx = "AMX" if any(f.startswith("amx") for f in flags) else "no AMX"
    return f"{model} ({' '.join(shown)}; {amx})"


def build_line() -> str:
    """What the installed llama.cpp was built to use (llama_print_system_info)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    on = [part.split("=")[0].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    return ", ".join(on) or info.strip()


def side_by_side(threads: int, max_tokens: int, reps: int = 3) -> dict[str, Any]:
    """Every figure of the comparison, measured now."""
    load_before = load()
    cases = matrix(threads, max_tokens, reps)
    chosen = choose(cases)
    log.info("chosen: %s, repack %s, KV %s; through HTTP beside the loop", chosen["weights"],
             chosen["repack"], chosen["kv"])
    http = through_http(chosen, _weights()[chosen["weights"]], threads, max_tokens, reps)
    log.info("sampling's cost")
    sampling = _child(["-m", "bench.engine_loop", str(_weights()["file"]), "--sampling",
                       "--threads", str(threads)])
    return {"threads": threads, "max_tokens": max_tokens, "load_before": load_before,
            "load_after": load(), "cpu": cpu_line(), "build": build_line(), "cases": cases,
            "chosen": chosen, "http": http, "sampling": sampling, "reps": reps}


def _ok(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _name(case: dict[str, Any]) -> str:
    weights = "Q4_1 (as shipped)" if case["weights"] == "file" else \
        f"{case['weights'].upper()} (from the Q4_1)"
    return f"{weights}, repack {'on' if case['repack'] else 'off'}, KV {case['kv']}"


def targets(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """The issue's targets for the chosen setup: (what was measured, met)."""
    http, chosen = result["http"], result["chosen"]
    single = http["loop_1"] / http["http_1"]
    crowd = http["loop_16"] / http["http_16"]
    return [
        (f"single stream within 1.15x of the loop: loop {http['loop_1']:.1f} / HTTP "
         f"{http['http_1']:.1f} tok/s = {single:.2f}x", single <= 1.15),
        (f"16 concurrent within 1.25x of the loop's 16-sequence batch: loop "
         f"{http['loop_16']:.1f} / HTTP {http['http_16']:.1f} tok/s = {crowd:.2f}x",
         crowd <= 1.25),
        (f"peak RSS, chat + embeddings, ≤ 512 MiB: {http['server_peak_rss_mib']:.0f} MiB",
         http["server_peak_rss_mib"] <= 512),
        (f"top-1 agreement ≥ 95%: {chosen['agreement']:.1%} over {chosen['tokens']} tokens",
         chosen["agreement"] >= QUALITY_BAR),
    ]


def rows(result: dict[str, Any]) -> list[str]:
    """bench/engines.md: the matrix, the choice, the HTTP ratios, sampling's cost."""
    chosen = result["chosen"]
    lines = [
        f"Measured by `python -m bench.engines` on {machine()}: {result['cpu']}. llama.cpp "
        f"built portable (AVX2 floor, no AVX-512, no AMX): {result['build']}. SmolLM2-135M, "
        f"{result['threads']} thread{'s' if result['threads'] > 1 else ''}, greedy, up to "
        f"{result['max_tokens']} new tokens; best "
        f"of {result['reps']} runs per figure; load average {result['load_before']} before, "
        f"{result['load_after']} after (a machine shared with other work: compare figures "
        "within this run, and ratios from runs made side by side).",
        "",
        "| weights, repack, KV cache | llama.cpp loop, 1 stream | 16 streams | peak RSS "
        "(loop process) | top-1 agreement with fp32 |",
        "|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        mark = " **(chosen)**" if case == chosen else ""
        bar = "" if case["agreement"] >= QUALITY_BAR else " (below 95%)"
        lines.append(f"| {_name(case)}{mark} | {case['s1_tok_s']:.1f} tok/s | "
                     f"{case['s16_tok_s']:.1f} tok/s | {case['peak_rss_mib']:.0f} MiB | "
                     f"{case['agreement']:.1%}{bar} |")
    http = result["http"]
    lines += [
        "",
        f"Chosen: {_name(chosen)}, the fastest (geometric mean of 1 and 16 streams) at the "
        "95% bar with a q8_0 KV cache (f16's does not fit the worker's 512 MiB at "
        "N_CTX=8192). Through `python -m ai_space` over HTTP, alternating run by run with the "
        "loop on the same weights:",
        "",
        "| | llama.cpp's own loop | ai_space over HTTP | loop / HTTP |",
        "|---|---|---|---|",
        f"| 1 stream | {http['loop_1']:.1f} tok/s | {http['http_1']:.1f} tok/s | "
        f"{http['loop_1'] / http['http_1']:.2f}x |",
        f"| 16 streams (loop: one 16-sequence batch) | {http['loop_16']:.1f} tok/s | "
        f"{http['http_16']:.1f} tok/s | {http['loop_16'] / http['http_16']:.2f}x |",
        "",
        *[f"- {text}: {_ok(met)}" for text, met in targets(result)],
        "",
        "Sampling 16 requests' next tokens from real logits (49,152-token vocabulary), best "
        "of 20; a decode step of 16 streams took "
        f"{1000 * 16 / chosen['s16_tok_s']:.1f} ms in the loop above:",
        "",
        "| sampling | one request at a time (before) | one batch pass (now) |",
        "|---|---|---|",
        *[f"| {name} | {fig['per_request_ms']:.2f} ms | {fig['batch_ms']:.2f} ms |"
          for name, fig in result["sampling"].items()],
    ]
    return lines


def bench_rows(result: dict[str, Any]) -> list[str]:
    """The same figures as rows of `make bench`'s table (benchmark, case, result, baseline,
    target)."""
    chosen, http = result["chosen"], result["http"]
    head = (f"llama.cpp worker setup, SmolLM2-135M, {result['threads']} threads, greedy, "
            f"max {result['max_tokens']} tokens (bench/engines.py; {result['cpu']}; "
            "portable AVX2 build)")
    out: list[str] = []
    for case in result["cases"]:
        out.append(f"| {head if not out else ''} | loop: {_name(case)} | 1 stream "
                   f"{case['s1_tok_s']:.1f} tok/s, 16 streams {case['s16_tok_s']:.1f} tok/s, "
                   f"peak RSS {case['peak_rss_mib']:.0f} MiB | top-1 agreement "
                   f"{case['agreement']:.1%} | {'chosen' if case == chosen else ''} |")
    out.append(f"| | ai_space over HTTP, chosen setup | 1 stream {http['http_1']:.1f} tok/s, "
               f"16 concurrent {http['http_16']:.1f} tok/s, peak RSS (chat + embeddings) "
               f"{http['server_peak_rss_mib']:.0f} MiB | loop / HTTP: 1 stream "
               f"{http['loop_1'] / http['http_1']:.2f}x, 16 streams "
               f"{http['loop_16'] / http['http_16']:.2f}x | "
               + "; ".join(f"{text.split(':')[0]}: {_ok(met)}" for text, met in targets(result))
               + " |")
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
    parser.add_argument("--reps", type=int, default=3, help="runs per figure (the best counts)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    result = side_by_side(args.threads, args.max_tokens, args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    text = "\n".join(rows(result)) + "\n"
    Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
