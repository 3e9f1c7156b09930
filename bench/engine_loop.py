"""llama.cpp's own batched decode loop on one weight file, in a process of its own.

The baseline of bench/engines.py: the batch API and llama.cpp's own greedy sampler, no
server, no Python per token beyond filling the batch. N sequences share one context as in
the server (unified KV cache, flash attention, the same KV type and threads); each is
prefilled with the same chat prompt and decodes until EOS or the token limit. Also measures
top-1 agreement with a reference's next-token choices on held-out text, with the same
weights and settings, and reports the process's peak RSS.

    python -m bench.engine_loop GGUF --streams 1,16 --tokens 128 [--repack 0] [--kv f16]
        [--reference ref.json]     # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from ai_space.generation import SamplingParams
from ai_space.llama.engine import KV_TYPES
from ai_space.llama.model import GGUFChatModel
from ai_space.llama.sampling import Sampler, pick_batch, pick_from
from bench.engine_quality import HELD_OUT

# The request bench/engines.py sends through HTTP too: greedy, it runs to the token limit.
LONG = "Write a long, detailed story about a lighthouse keeper and a storm."


def _context(chat: GGUFChatModel, *, n_ctx: int, n_batch: int, streams: int, threads: int,
             kv: str) -> Any:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = streams
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = True
    params.no_perf = True
    params.type_k = params.type_v = KV_TYPES[kv]
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(chat.model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    return ctx


def generate(chat: GGUFChatModel, ctx: Any, prompt: list[int], streams: int,
             tokens: int) -> tuple[int, float]:
    """(tokens generated, seconds) for `streams` sequences decoding together from `prompt`."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    sampler = llama_cpp.llama_sampler_init_greedy()
    batch = llama_cpp.llama_batch_init(max(len(prompt) * streams, streams), 0, 1)
    started = time.perf_counter()
    n = 0
    for seq in range(streams):
        for pos, token in enumerate(prompt):
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
            batch.seq_id[n][0], batch.logits[n] = seq, pos == len(prompt) - 1
            n += 1
    batch.n_tokens = n
    # Batch index of each live sequence's last token (where its logits are).
    live = {seq: (seq + 1) * len(prompt) - 1 for seq in range(streams)}
    made = 0
    for step in range(tokens):
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        picks = {seq: llama_cpp.llama_sampler_sample(sampler, ctx, index)
                 for seq, index in live.items()}
        live = {}
        n = 0
        for seq, token in picks.items():
            if chat.vocab.is_eog(token):
                continue
            made += 1
            if step == tokens - 1:
                continue
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, len(prompt) + step, 1
            batch.seq_id[n][0], batch.logits[n] = seq, True
            live[seq] = n
            n += 1
        if not live:
            break
        batch.n_tokens = n
    elapsed = time.perf_counter() - started
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_sampler_free(sampler)
    return made, elapsed


def next_tokens(chat: GGUFChatModel, ids: list[int], *, threads: int, kv: str) -> list[int]:
    """The token ranked first after every prefix of `ids`, in one decode."""
    return [int(t) for t in all_logits(chat, ids, threads=threads, kv=kv).argmax(-1)]


def all_logits(chat: GGUFChatModel, ids: list[int], *, threads: int,
               kv: str) -> np.ndarray[Any, Any]:
    """The logits after every prefix of `ids` (a copy), in one decode."""
    n = max(512, len(ids))
    ctx = _context(chat, n_ctx=n, n_batch=n, streams=1, threads=threads, kv=kv)
    batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
    for i, token in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
        batch.seq_id[i][0], batch.logits[i] = 0, True
    batch.n_tokens = len(ids)
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx),
                                   shape=(len(ids), chat.vocab.size))
    out = logits.copy()
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return out


def sampling_cost(chat: GGUFChatModel, *, threads: int, rows: int = 16,
                  reps: int = 20) -> dict[str, dict[str, float]]:
    """Milliseconds to pick the next token of `rows` requests from real logits (16 positions
    of the held-out text), one request at a time (`pick_from`, as the engine did) and in one
    batch pass (`pick_batch`), for greedy, temperature and top-p; best of `reps`."""
    logits = all_logits(chat, chat.vocab.encode(HELD_OUT), threads=threads, kv="q8_0")
    batch = np.ascontiguousarray(logits[np.linspace(0, len(logits) - 1, rows).astype(int)])
    settings = {"greedy": SamplingParams(8, temperature=0.0),
                "temperature 1": SamplingParams(8, temperature=1.0, seed=1),
                "temperature 0.7, top_p 0.9": SamplingParams(8, temperature=0.7, top_p=0.9,
                                                             seed=1)}
    out: dict[str, dict[str, float]] = {}
    for name, params in settings.items():
        samplers = [Sampler(params) for _ in range(rows)]
        each, together = [], []
        for _ in range(reps):
            started = time.perf_counter()
            for i, sampler in enumerate(samplers):
                pick_from(batch[i], params, sampler.rng)
            each.append(time.perf_counter() - started)
            started = time.perf_counter()
            pick_batch(batch, samplers)
            together.append(time.perf_counter() - started)
        out[name] = {"per_request_ms": 1000 * min(each), "batch_ms": 1000 * min(together)}
    return out


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(path: Path, *, streams: list[int], tokens: int, threads: int, kv: str,
            repack: bool, reps: int, reference: list[int] | None) -> dict[str, Any]:
    """Best-of-`reps` tok/s at each stream count, peak RSS, and agreement with `reference`."""
    chat = GGUFChatModel(path, repack=repack)
    prompt = chat.prompt_ids([{"role": "user", "content": LONG}])
    most = max(streams)
    ctx = _context(chat, n_ctx=most * (len(prompt) + tokens) + 64,
                   n_batch=max(512, most * len(prompt)), streams=most, threads=threads, kv=kv)
    generate(chat, ctx, prompt, 1, 4)  # warm-up: pages in the weights, sizes the buffers
    result: dict[str, Any] = {}
    for count in streams:
        rates = []
        for _ in range(reps):
            made, elapsed = generate(chat, ctx, prompt, count, tokens)
            rates.append(made / elapsed)
        result[f"s{count}_tok_s"] = max(rates)
    llama_cpp.llama_free(ctx)
    result["peak_rss_mib"] = peak_rss_mib()
    if reference is not None:
        ids = chat.vocab.encode(HELD_OUT)
        ours = next_tokens(chat, ids, threads=threads, kv=kv)
        result["agreement"] = float(np.mean(np.array(ours) == np.array(reference)))
        result["tokens"] = len(ids)
    chat.close()
    return result


def _serve(args: argparse.Namespace) -> None:
    """One loaded model; each stdin line "N" runs N sequences once and prints its figures, so
    the caller can alternate these runs with the server's."""
    chat = GGUFChatModel(args.gguf, repack=bool(args.repack))
    prompt = chat.prompt_ids([{"role": "user", "content": LONG}])
    most = max(int(s) for s in args.streams.split(","))
    ctx = _context(chat, n_ctx=most * (len(prompt) + args.tokens) + 64,
                   n_batch=max(512, most * len(prompt)), streams=most, threads=args.threads,
                   kv=args.kv)
    generate(chat, ctx, prompt, 1, 4)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        made, elapsed = generate(chat, ctx, prompt, int(line), args.tokens)
        sys.stdout.write(json.dumps({"tokens": made, "seconds": elapsed}) + "\n")
        sys.stdout.flush()


def main() -> None:
    """Measure one weight file; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--streams", default="1,16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv", default="q8_0", choices=sorted(KV_TYPES))
    parser.add_argument("--repack", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reference", type=Path, help="JSON list of reference next tokens")
    parser.add_argument("--sampling", action="store_true",
                        help="measure sampling's cost instead (sampling_cost)")
    parser.add_argument("--serve", action="store_true",
                        help="read stream counts from stdin, answer each with one JSON line")
    args = parser.parse_args()
    if args.sampling:
        chat = GGUFChatModel(args.gguf, repack=bool(args.repack))
        sys.stdout.write(json.dumps(sampling_cost(chat, threads=args.threads)) + "\n")
        return
    if args.serve:
        _serve(args)
        return
    reference = json.loads(args.reference.read_text()) if args.reference else None
    result = measure(args.gguf, streams=[int(s) for s in args.streams.split(",")],
                     tokens=args.tokens, threads=args.threads, kv=args.kv,
                     repack=bool(args.repack), reps=args.reps, reference=reference)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
