"""The chat model's weights in the format chosen by measurement, derived once and cached.

A packaged GGUF comes in whatever format its publisher picked (SmolLM2's is Q4_1: its linear
layers Q4_1, the tied embedding Q8_0). Which format is fastest at the quality bar depends on
the CPU's kernels: llama.cpp repacks Q4_0 and IQ4_NL into interleaved blocks for AVX2, has no
such kernels for Q4_1 or Q8_0 on x86, and Q8_0's dot products are the cheapest to decode.
`bench/engines.py` measures every candidate with repacking on and off, and each one's top-1
agreement with the fp32 reference; `WEIGHTS=auto` loads what it chose (MEASURED). Q4_0 and
IQ4_NL re-quantised from the Q4_1 file lose precision twice (Q4_1's per-block minimum has no
place in them) and fall far below the bar; Q8_0 holds Q4_1's values almost exactly.

A format other than the file's own is made by llama.cpp's `llama-quantize` (from the same build
as `llama-server`, ai_space/llama/build_server.sh; re-quantising: the tensors are dequantised,
then quantised again) on first start, in its own process so the server's peak memory never
holds the float32 copy of a tensor, into `GGUF_CACHE` beside the embedder's GGUF, and reused on
every later start. The file name carries the source's size and time and llama.cpp's version, so
a new model file or engine build makes a new file. `python -m ai_space.llama.weights pkg:smollm2
auto` makes it ahead of time (the worker image does, at build time).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ai_space.llama.bert_gguf import cache_dir
from ai_space.llama.variants import engine_binary, engine_version

log = logging.getLogger("ai_space")

# WEIGHTS values -> llama-quantize's type names. "file" loads the GGUF as shipped.
WEIGHT_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "iq4_nl": "IQ4_NL"}
_FORMAT = "v1"  # bump when the derivation changes, so cached files are redone
# WEIGHTS=auto: what bench/engines.py measured fastest at the quality bar (top-1 agreement
# with fp32 >= 95%), per packaged model. Other models are loaded as shipped: nobody measured
# them, and re-quantising someone's Q4_K_M to a plainer type would cost quality unseen.
MEASURED = {"pkg:smollm2": "q8_0"}


def weights_for(model_id: str, weights: str) -> str:
    """The WEIGHTS value to use for a model: auto resolved, anything else as set."""
    if weights != "auto":
        return weights
    return MEASURED.get(model_id, "file")


def derived_path(source: Path, weights: str, cache: Path) -> Path:
    """Where the `weights` form of `source` is cached (it may not exist yet)."""
    stat = source.stat()
    version = engine_version()
    return cache / (f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}-{weights}-"
                    f"llama{version}-{_FORMAT}.gguf")


def chat_weights(source: Path, weights: str, *, cache: Path | None = None) -> Path:
    """The GGUF to load for `weights`: the source itself for "file", else its derived copy,
    made now (in a child process) if it is not cached yet."""
    if weights == "file":
        return source
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"unknown weight format {weights!r}")
    target = derived_path(source, weights, cache or cache_dir())
    if target.is_file():
        log.info("weights: reusing %s from GGUF_CACHE", target.name)
        return target
    started = time.perf_counter()
    requantize(source, weights, target)
    log.info("weights: made %s from %s in %.1fs (once; later starts reuse it)", target.name,
             source.name, time.perf_counter() - started)
    return target


def requantize(source: Path, weights: str, target: Path) -> None:
    """Write `source` re-quantised to `weights` at `target` (atomically), with llama-quantize."""
    quantize = engine_binary("llama-quantize")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    threads = max(1, len(os.sched_getaffinity(0)))
    try:
        # --allow-requantize: the source is already quantised. Started from its own folder, as
        # ggml's loader also looks for CPU libraries in the working directory.
        done = subprocess.run([str(quantize), "--allow-requantize", str(source), str(partial),
                               WEIGHT_TYPES[weights], str(threads)], cwd=quantize.parent,
                              timeout=900, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, errors="replace")
        if done.returncode != 0:
            # llama-quantize reports per tensor on stderr: show it only when it failed.
            raise RuntimeError(f"re-quantising {source.name} to {weights} failed "
                               f"({done.returncode}): {done.stderr[-2000:]}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """`SOURCE WEIGHTS [TARGET]`: derive a GGUF (WEIGHTS may be auto); SOURCE may be a pkg:
    id. Prints the path."""
    logging.basicConfig(level=logging.INFO)
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: python -m ai_space.llama.weights SOURCE WEIGHTS [TARGET]\n")
        return 2
    source = Path(argv[0])
    if not source.is_file():
        from ai_space.models.packaged import resolve

        gguf = resolve(argv[0], None).gguf_path
        if gguf is None:
            raise ValueError(f"{argv[0]} is not a GGUF file or a packaged GGUF model")
        source = gguf
    if len(argv) == 3:
        requantize(source, argv[1], Path(argv[2]))
        sys.stdout.write(f"{argv[2]}\n")
    else:
        sys.stdout.write(f"{chat_weights(source, weights_for(argv[0], argv[1]))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
