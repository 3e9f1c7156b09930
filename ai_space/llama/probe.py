"""The self-check's child: start llama-server on the real GGUF and decode a few tokens.

Run as `python -m ai_space.llama.probe MODEL.gguf THREADS KV_TYPE MODEL_ID WEIGHTS`. It derives
the weights the engine will serve (the WEIGHTS form of the file, into GGUF_CACHE, so the
server's own start reuses them), starts the same llama-server binary with the kernels the
engine will use (flash attention, the KV cache type, a batched prompt, then single-token
steps), and asks for a short greedy completion. If llama-server dies by a signal (an
instruction this CPU lacks: SIGILL), this child dies by the same signal, so the parent's
verdict reads the same as when the engine ran in-process. It prints one JSON line and exits 0
when the decode worked.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

# A prompt long enough that llama.cpp takes the batched matrix kernels for it.
_PROMPT = ("The worker checks that this CPU runs every kernel it needs: the prompt goes through "
           "in one batch, and then a few tokens are decoded one at a time. The answer is")
_DECODE_TOKENS = 6


def main(argv: list[str]) -> int:
    """Decode a few tokens of the model at argv[0] on llama-server; print what happened."""
    path, threads, kv_type, model_id, weights = argv[0], int(argv[1]), argv[2], argv[3], argv[4]
    started = time.perf_counter()
    from ai_space.llama.process import EngineFailed, EngineProcess
    from ai_space.llama.variants import engine_binary
    from ai_space.llama.weights import chat_weights, weights_for

    model = chat_weights(Path(path), weights_for(model_id, weights))
    engine = EngineProcess("probe", [
        str(engine_binary()), "--model", str(model), "--ctx-size", "256", "--parallel", "1",
        "--threads", str(threads), "--threads-batch", str(threads), "--cache-type-k", kv_type,
        "--cache-type-v", kv_type, "--flash-attn", "on", "--cache-ram", "0", "--no-webui",
        "--no-warmup",
        "--log-verbosity", "1"], restart=False)
    try:
        engine.start()
        transport = httpx.HTTPTransport(uds=str(engine.socket))
        with httpx.Client(transport=transport, base_url="http://engine", timeout=60) as client:
            answer = client.post("/completion", headers={"Authorization": f"Bearer {engine.key}"},
                                 json={"prompt": _PROMPT, "n_predict": _DECODE_TOKENS,
                                       "temperature": 0, "cache_prompt": False})
        answer.raise_for_status()
        decoded = int(answer.json()["tokens_predicted"])
    except (EngineFailed, httpx.HTTPError) as exc:
        code = engine.exit_code()
        if code is not None and code < 0:
            # Die as the engine died, so the parent names the signal.
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        sys.stderr.write(f"{exc}\n")
        return 1
    finally:
        engine.stop()
    # The report is this child's stdout, which the parent reads: a protocol, not a log line.
    sys.stdout.write(json.dumps({"decoded": decoded,
                                 "seconds": round(time.perf_counter() - started, 3)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
