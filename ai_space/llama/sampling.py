"""Token choice from llama.cpp logits: greedy, or temperature and top-p, for a whole batch.

The decode thread waits for every request's next token before the next step, so sampling
sits on the batch's critical path. Per request in Python, a 49,152-entry vocabulary costs
about as much as a decode step at 16 streams (bench/engines.py measures both). `pick_batch`
takes the step's logits as one (requests x vocabulary) array and does each kind of work in
one numpy pass over the rows that need it: one argmax for all, one softmax over the sampled
rows, and top-p over only the few tokens that can be in a nucleus. Each request keeps its own
seeded generator and draws one number per token, exactly as `pick_from` (the per-request
reference) does, so a seed gives the same tokens alone, in any batch, and as before.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from ai_space.generation import SamplingParams

Logits = np.ndarray[Any, Any]

# Top-p first looks only at tokens within this factor of the most likely one; that set is a
# prefix of the sorted order, so when its mass passes top_p the nucleus lies inside it and
# sorting it alone gives the exact answer. Otherwise (a very flat distribution) the row falls
# back to sorting the whole vocabulary.
_NUCLEUS_FLOOR = 1e-4
# Tokens per block in the two-level cumulative sum of _inverse_cdf.
_BLOCK = 256


class Sampler:
    """Picks tokens for one request, with its own settings and its own seeded generator."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def pick(self, logits_ptr: Any, n_vocab: int) -> int:
        """The next token from a pointer to `n_vocab` float logits (read, never kept)."""
        return pick_batch(logits_rows(logits_ptr, 1, n_vocab), [self])[0]


def logits_rows(logits_ptr: Any, rows: int, n_vocab: int) -> Logits:
    """A read-only (rows x n_vocab) float32 view of llama.cpp's logits buffer (not a copy)."""
    if not logits_ptr:
        raise RuntimeError("llama.cpp returned no logits for this step")
    view = np.ctypeslib.as_array(ctypes.cast(logits_ptr, ctypes.POINTER(ctypes.c_float)),
                                 shape=(rows, n_vocab))
    view.flags.writeable = False
    return view


def pick_batch(rows: Logits, samplers: Sequence[Sampler]) -> list[int]:
    """The next token of each request: row i of `rows` belongs to `samplers[i]`."""
    if rows.ndim != 2 or rows.shape[0] != len(samplers):
        raise ValueError(f"{rows.shape[0]} rows of logits for {len(samplers)} requests")
    chosen = rows.argmax(axis=1)  # greedy rows, and the limit of a vanishing temperature
    sampled = [i for i, s in enumerate(samplers) if s.params.temperature > 0.0]
    if not sampled:
        return [int(token) for token in chosen]
    # Fancy indexing copies: take the rows as they are when every request samples.
    picked_rows = rows if len(sampled) == len(samplers) else rows[sampled]
    weights, totals = _exp_weights(picked_rows, [samplers[i].params.temperature
                                                 for i in sampled])
    draws = np.array([samplers[i].rng.random() for i in sampled])
    if any(samplers[i].params.top_p >= 1.0 for i in sampled):
        picked = _inverse_cdf(weights, draws * totals)
        for r, i in enumerate(sampled):
            if samplers[i].params.top_p >= 1.0 and np.isfinite(totals[r]):
                chosen[i] = picked[r]
    for r, i in enumerate(sampled):
        # A temperature so small that logits / temperature overflows (a NaN total) is, in
        # the limit, greedy: that row keeps its argmax.
        if samplers[i].params.top_p < 1.0 and np.isfinite(totals[r]):
            chosen[i] = _nucleus(weights[r], totals[r], samplers[i].params.top_p, draws[r])
    return [int(token) for token in chosen]


def _exp_weights(rows: Logits, temperatures: list[float]) -> tuple[Logits, Logits]:
    """exp(rows / temperature - row max) in float64 (the top token weighs exactly 1), and each
    row's total: softmax without the division, which only the top-p rows need."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        weights = rows.astype(np.float64)
        weights /= np.asarray(temperatures, dtype=np.float64)[:, None]
        weights -= weights.max(axis=1, keepdims=True)
        np.exp(weights, out=weights)
        totals = weights.sum(axis=1)
    return weights, totals


def _inverse_cdf(weights: Logits, targets: Logits) -> list[int]:
    """For each row, the first token whose cumulative weight passes its target.

    A cumulative sum over the whole vocabulary is sequential and, over 16 rows, costs more
    than everything else here; the running sums of blocks of tokens find the block in one
    vectorised pass, and only that block is summed token by token.
    """
    n_vocab = weights.shape[1]
    starts = np.arange(0, n_vocab, _BLOCK)
    block_cdf = np.cumsum(np.add.reduceat(weights, starts, axis=1), axis=1)
    picked = []
    for row, target in enumerate(targets):
        if not np.isfinite(target):
            picked.append(0)  # the caller keeps this row's argmax
            continue
        block = min(int(block_cdf[row].searchsorted(target, side="right")), len(starts) - 1)
        before = block_cdf[row, block - 1] if block else 0.0
        inside = np.cumsum(weights[row, starts[block]:starts[block] + _BLOCK]) + before
        offset = min(int(inside.searchsorted(target, side="right")), len(inside) - 1)
        picked.append(int(starts[block]) + offset)
    return picked


def _nucleus(weights: Logits, total: float, top_p: float, draw: float) -> int:
    """One draw from the smallest set of most likely tokens whose mass reaches top_p."""
    candidates = np.flatnonzero(weights >= _NUCLEUS_FLOOR)
    probs = weights[candidates] / total
    if probs.sum() <= top_p:
        candidates = np.arange(weights.shape[0])
        probs = weights / total
    order = np.argsort(-probs, kind="stable")
    sorted_probs = probs[order]
    # Keep the smallest set whose mass reaches top_p; the top token always stays.
    keep = np.cumsum(sorted_probs) - sorted_probs <= top_p
    order, sorted_probs = candidates[order[keep]], sorted_probs[keep]
    cdf = np.cumsum(sorted_probs / sorted_probs.sum())
    cdf /= cdf[-1]
    return int(order[min(int(cdf.searchsorted(draw, side="right")), len(order) - 1)])


def pick_from(logits: Logits, params: SamplingParams, rng: np.random.Generator) -> int:
    """Choose a token from one row of logits, as the transformers path does (the reference
    `pick_batch` is held to)."""
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
