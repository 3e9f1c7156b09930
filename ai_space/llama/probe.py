"""The self-check's child: load the real GGUF with llama.cpp and decode a few tokens.

Run as `python -m ai_space.llama.probe MODEL.gguf THREADS KV_TYPE MODEL_ID WEIGHTS`. It loads
the weights the engine will serve (the WEIGHTS form of the file, derived into GGUF_CACHE here
when it is not there yet, so the server's own load then reuses it) and uses the kernels the
engine will use (a batched prompt, then single-token steps, flash attention and the KV cache
type), so an instruction this CPU lacks kills this child, not the server. It prints one JSON
line and exits 0 when the decode worked.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# A prompt long enough that llama.cpp takes the batched matrix kernels for it.
_PROMPT = ("The worker checks that this CPU runs every kernel it needs: the prompt goes through "
           "in one batch, and then a few tokens are decoded one at a time. The answer is")
_DECODE_TOKENS = 6


def main(argv: list[str]) -> int:
    """Decode a few tokens of the model at argv[0]; print what happened as JSON."""
    path, threads, kv_type, model_id, weights = argv[0], int(argv[1]), argv[2], argv[3], argv[4]
    started = time.perf_counter()
    import llama_cpp

    from ai_space.llama.weights import chat_weights, weights_for

    path = str(chat_weights(Path(path), weights_for(model_id, weights)))

    kv = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}[kv_type]
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=64, n_threads=threads,
                          n_threads_batch=threads, flash_attn=True, type_k=kv, type_v=kv,
                          verbose=False)
    tokens = llm.tokenize(_PROMPT.encode())
    llm.eval(tokens)
    for _ in range(_DECODE_TOKENS):
        llm.eval([llm.sample(temp=0.0)])
    # The report is this child's stdout, which the parent reads: a protocol, not a log line.
    sys.stdout.write(json.dumps({"prompt_tokens": len(tokens), "decoded": _DECODE_TOKENS,
                                 "seconds": round(time.perf_counter() - started, 3)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
