"""Per-request token choice from llama.cpp logits: greedy, or temperature and top-p."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ai_space.generation import SamplingParams


class Sampler:
    """Picks tokens for one request, with its own settings and its own seeded generator."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def pick(self, logits_ptr: Any, n_vocab: int) -> int:
        """The next token from a pointer to `n_vocab` float logits (read, never kept)."""
        if not logits_ptr:
            raise RuntimeError("llama.cpp returned no logits for this request")
        logits = np.ctypeslib.as_array(ctypes.cast(logits_ptr, ctypes.POINTER(ctypes.c_float)),
                                       shape=(n_vocab,))
        return pick_from(logits, self.params, self.rng)


def pick_from(logits: np.ndarray[Any, Any], params: SamplingParams,
              rng: np.random.Generator) -> int:
    """Choose a token from one row of logits, as the transformers path does."""
    if params.temperature <= 0.0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = logits.astype(np.float64) / params.temperature
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
    if not np.isfinite(probs).all():
        # A temperature so small that logits / temperature overflows: in the limit, greedy.
        return int(np.argmax(logits))
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        # Keep the smallest set whose mass reaches top_p; the top token always stays.
        keep = np.cumsum(sorted_probs) - sorted_probs <= params.top_p
        order, sorted_probs = order[keep], sorted_probs[keep]
        return int(order[rng.choice(len(order), p=sorted_probs / sorted_probs.sum())])
    return int(rng.choice(len(probs), p=probs))
