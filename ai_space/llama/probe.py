"""The self-check: start llama-server on the real GGUF and decode a few tokens, before the
engine is chosen.

It derives the weights the engine will serve (the WEIGHTS form of the file, into GGUF_CACHE,
so the engine's own start reuses them), starts the same llama-server binary with the kernels
the engine will use (flash attention, the KV cache type, a batched prompt, then single-token
steps), and asks for a short greedy completion. llama-server is the child: if it dies by a
signal (an instruction this CPU lacks: SIGILL), the check fails with that signal's name and
the server goes on. `python -m ai_space.llama.probe MODEL.gguf THREADS KV_TYPE MODEL_ID
WEIGHTS` runs it alone, printing one JSON line (and dying by the engine's signal).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from ai_space.llama.process import EngineFailed, EngineProcess
from ai_space.llama.variants import engine_binary
from ai_space.selfcheck import PROBE_TIMEOUT_S, ProbeResult, signal_name

# A prompt long enough that llama.cpp takes the batched matrix kernels for it.
_PROMPT = ("The worker checks that this CPU runs every kernel it needs: the prompt goes through "
           "in one batch, and then a few tokens are decoded one at a time. The answer is")
_DECODE_TOKENS = 6


def probe_engine(gguf: Path, *, threads: int, kv_type: str, model_id: str = "",
                 weights: str = "file") -> tuple[ProbeResult, int | None]:
    """(the verdict, the engine's exit status when it died: negative for a signal)."""
    from ai_space.llama.weights import chat_weights, weights_for

    started = time.perf_counter()
    try:
        model = chat_weights(gguf, weights_for(model_id, weights))
    except (OSError, RuntimeError, ValueError) as exc:
        return ProbeResult(False, f"the weights could not be made: {exc}"), None
    engine = EngineProcess("probe", [
        str(engine_binary()), "--model", str(model), "--ctx-size", "256", "--parallel", "1",
        "--threads", str(threads), "--threads-batch", str(threads), "--cache-type-k", kv_type,
        "--cache-type-v", kv_type, "--flash-attn", "on", "--cache-ram", "0", "--no-webui",
        "--no-warmup", "--log-verbosity", "1"], restart=False, ready_timeout_s=PROBE_TIMEOUT_S)
    try:
        engine.start()
        transport = httpx.HTTPTransport(uds=str(engine.socket))
        with httpx.Client(transport=transport, base_url="http://engine",
                          timeout=PROBE_TIMEOUT_S) as client:
            answer = client.post("/completion", headers={"Authorization": f"Bearer {engine.key}"},
                                 json={"prompt": _PROMPT, "n_predict": _DECODE_TOKENS,
                                       "temperature": 0, "cache_prompt": False})
        answer.raise_for_status()
        decoded = int(answer.json()["tokens_predicted"])
    except (EngineFailed, httpx.HTTPError, KeyError, ValueError) as exc:
        code = engine.exit_code()
        if code is not None and code < 0:
            return ProbeResult(False, f"llama-server died by {signal_name(-code)} after "
                                      f"{time.perf_counter() - started:.1f} s"), code
        return ProbeResult(False, f"llama-server failed its first decode: {exc}"), code
    finally:
        engine.stop()
    return ProbeResult(True, f"decoded {decoded} tokens in llama-server in "
                             f"{time.perf_counter() - started:.1f} s"), None


def main(argv: list[str]) -> int:
    """Run the check on argv's model; print it as JSON; die by the engine's signal."""
    path, threads, kv_type, model_id, weights = argv[0], int(argv[1]), argv[2], argv[3], argv[4]
    result, code = probe_engine(Path(path), threads=threads, kv_type=kv_type,
                                model_id=model_id, weights=weights)
    if code is not None and code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    if not result.ok:
        sys.stderr.write(result.detail + "\n")
        return 1
    # The report is this child's stdout, which the parent reads: a protocol, not a log line.
    sys.stdout.write(json.dumps({"decoded": _DECODE_TOKENS, "detail": result.detail}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
