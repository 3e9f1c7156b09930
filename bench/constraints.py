"""What the llama.cpp engine's per-request shaping costs: free text beside `logprobs` and a
`json_schema` grammar on the same server, and the grammar sampler's two checks.

One `python -m ai_space` (ENGINE=llama.cpp, SmolLM2 Q4_1, chat only) answers, greedy and
streamed, in rounds that alternate the three kinds of request, so each kind meets the same
moments of a shared machine. Throughput is completion tokens over the answer's wall time.
Then, in this process, the grammar sampler's cost per step: checking the one token picked,
and masking the whole vocabulary (what a refused pick costs).

    .venv/bin/python -m bench.constraints [--threads 2] [--rounds 5] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from bench.ai_space_bench import TOKEN, _start
from bench.common import free_port, load, machine, median

PROMPT = "Describe the city of Paris: its name, its country and its population in millions."
SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["name", "country", "population_millions"],
          "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                         "population_millions": {"type": "number"}}}
KINDS: dict[str, dict[str, Any]] = {
    "free text": {},
    "logprobs, top_logprobs=5": {"logprobs": True, "top_logprobs": 5},
    "json_schema (3 fields)": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "city", "strict": True, "schema": SCHEMA}}},
}


def _stream(client: httpx.Client, extra: dict[str, Any], max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) of one streamed greedy answer."""
    started = time.perf_counter()
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            **extra}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and (chunk := json.loads(line[6:])).get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return tokens, time.perf_counter() - started


def served(threads: int, rounds: int, max_tokens: int) -> dict[str, list[float]]:
    """tok/s of each kind of request, one figure per round."""
    port = free_port()
    server = _start({"ENGINE": "llama.cpp", "N_THREADS": str(threads),
                     "EMBEDDING_MODEL_ID": "none", "MAX_TOKENS": str(max_tokens)}, port)
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            _stream(client, {}, 8)  # warm-up
            for _ in range(rounds):
                for kind, extra in KINDS.items():
                    tokens, seconds = _stream(client, extra, max_tokens)
                    rates[kind].append(tokens / seconds)
    finally:
        server.terminate()
        server.wait(30)
    return rates


def grammar_steps(repeats: int = 200) -> tuple[float, float]:
    """(µs to check one token, ms to mask the whole vocabulary) for SCHEMA's grammar."""
    import numpy as np

    from ai_space.llama.constraints import Grammar, grammar_for
    from ai_space.llama.model import GGUFChatModel
    from ai_space.models.packaged import resolve
    from ai_space.schema import ResponseFormat

    path = resolve("pkg:smollm2", None).gguf_path
    assert path is not None
    chat = GGUFChatModel(path)
    gbnf = grammar_for(ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}))
    assert gbnf is not None
    grammar = Grammar(chat.vocab.vocab, gbnf)
    logits = np.random.default_rng(0).standard_normal(chat.vocab.size).astype(np.float32)
    started = time.perf_counter()
    for token in range(repeats):
        grammar.allows(token)
    check_us = (time.perf_counter() - started) / repeats * 1e6
    started = time.perf_counter()
    for _ in range(repeats // 10):
        grammar.mask(logits.copy())
    mask_ms = (time.perf_counter() - started) / (repeats // 10) * 1e3
    grammar.close()
    chat.close()
    return check_us, mask_ms


def main() -> None:
    """Run both parts and print one markdown table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    before = load()
    rates = served(args.threads, args.rounds, args.max_tokens)
    check_us, mask_ms = grammar_steps()
    lines = [f"{machine()}; {args.threads} threads, greedy, streamed, max {args.max_tokens} "
             f"tokens, {args.rounds} rounds; load average {before} before, {load()} after",
             "", "| request | tok/s, median (min-max) |", "|---|---|"]
    lines += [f"| {kind} | {median(r):.1f} ({min(r):.1f}-{max(r):.1f}) |"
              for kind, r in rates.items()]
    lines += ["", f"grammar sampler: {check_us:.1f} µs to check the token picked, "
              f"{mask_ms:.2f} ms to mask the whole vocabulary"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
