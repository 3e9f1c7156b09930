"""Quality of the CPU engines: top-1 agreement with the fp32 reference on held-out text.

Quantised kernels move near-ties, so one greedy answer says little; this compares, at every
position of a text none of the engines was tuned on, the next token each engine ranks first
with the one transformers ranks first in float32 (the GGUF dequantised, what ai_space served
before llama.cpp). Run alone: `.venv/bin/python -m bench.engine_quality`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# Held out: written for this benchmark, used for nothing else.
HELD_OUT = """\
The harbour town wakes before the sun. Fishing boats slide out past the breakwater while the
bakery on the corner pulls its first trays of bread from the oven, and the smell drifts down
to the quay where a few early walkers stop to watch the gulls. By seven the market stalls are
up: tomatoes, lemons, bundles of thyme, a table of second-hand books with curling covers.

A freelancer who works from the café above the market keeps a simple routine. She answers
messages from clients for the first hour, then blocks out three hours for deep work with her
phone in a drawer. Invoices go out on Fridays. When a project runs late, she writes to the
client before the deadline, not after, and offers a new date she is sure she can meet.

Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. The light
reactions happen in the thylakoid membranes, where chlorophyll absorbs photons and splits
water; the Calvin cycle then fixes carbon in the stroma. Plants in hot, dry places often use
variants of this process that lose less water, opening their pores only at night.

To reverse a list in Python you can call its reverse method, which changes the list in
place, or slice it with a step of minus one, which returns a new list. Sorting works the same
way: sort changes the list, while sorted returns a copy. Both accept a key function, so you
can sort words by their length or records by a date field without writing a comparison.
"""


def _transformers_argmax(folder: str, gguf_file: str, ids: list[int],
                         dtype: str) -> np.ndarray[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file,
                                                      dtype=getattr(torch, dtype))
    model.eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return np.asarray(logits.float().argmax(-1).numpy())


def _llama_argmax(path: Path, ids: list[int], threads: int) -> np.ndarray[Any, Any]:
    import llama_cpp

    from ai_space.llama.engine import KV_TYPES
    from ai_space.llama.model import load_gguf

    model = load_gguf(path)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = max(512, len(ids))
    params.n_threads = params.n_threads_batch = threads
    # As the server runs it: q8_0 KV cache, flash attention.
    params.type_k = params.type_v = KV_TYPES["q8_0"]
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
    for i, token in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
        batch.seq_id[i][0], batch.logits[i] = 0, True
    batch.n_tokens = len(ids)
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(len(ids), n_vocab))
    out = logits.argmax(-1).copy()
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return np.asarray(out)


def reference_tokens() -> list[int]:
    """The fp32 reference's first-ranked next token after every prefix of the held-out text
    (transformers, the packaged GGUF dequantised to float32)."""
    from ai_space.models.packaged import resolve

    ids = held_out_ids()
    source = resolve("pkg:smollm2", None)
    assert source.gguf_file is not None
    return [int(t) for t in _transformers_argmax(source.location, source.gguf_file, ids,
                                                 "float32")]


def held_out_ids() -> list[int]:
    """The held-out text in the packaged model's tokens."""
    from ai_space.llama.model import GGUFChatModel
    from ai_space.models.packaged import resolve

    source = resolve("pkg:smollm2", None)
    assert source.gguf_path is not None
    chat = GGUFChatModel(source.gguf_path)
    ids = chat.vocab.encode(HELD_OUT)
    chat.close()
    return ids


def agreement(threads: int) -> dict[str, float]:
    """Top-1 agreement (0-1) of llama.cpp and of transformers bf16 with transformers fp32."""
    from ai_space.llama.model import GGUFChatModel
    from ai_space.models.packaged import resolve

    source = resolve("pkg:smollm2", None)
    assert source.gguf_path is not None
    assert source.gguf_file is not None
    chat = GGUFChatModel(source.gguf_path)
    ids = chat.vocab.encode(HELD_OUT)
    chat.close()
    reference = _transformers_argmax(source.location, source.gguf_file,
                                     ids, "float32")
    llama = _llama_argmax(source.gguf_path, ids, threads)
    bf16 = _transformers_argmax(source.location, source.gguf_file, ids, "bfloat16")
    return {"tokens": float(len(ids)),
            "llama.cpp": float((llama == reference).mean()),
            "transformers bf16": float((bf16 == reference).mean())}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reference"]:
        print(json.dumps(reference_tokens()))
    else:
        print(json.dumps(agreement(int(sys.argv[1]) if len(sys.argv) > 1 else 2)))
