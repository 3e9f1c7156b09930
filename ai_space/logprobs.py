"""Token log-probabilities in OpenAI's shape: computed from one row of logits, and kept with
the text delta their tokens produced.

They are the model's own distribution (a log-softmax of the raw logits), before temperature,
penalties, logit_bias or a grammar reshape it, as OpenAI reports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# Alternative and TokenLogprob live with the events that carry them (generation.py).
from ai_space.generation import Alternative, Delta, Event, Finished, TokenLogprob


def content(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    """A choice's `logprobs` object."""
    return {"content": [e.as_openai() for e in entries], "refusal": None}


def log_softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Log-probabilities of one row of logits, in float64 (stable for any logit range)."""
    row: np.ndarray[Any, Any] = logits.astype(np.float64)
    top = float(row.max())
    total: np.ndarray[Any, Any] = row - (top + float(np.log(np.exp(row - top).sum())))
    return total


def make_entry(token: int, logprob: float, top: list[tuple[int, float]],
               piece: Callable[[int], bytes]) -> TokenLogprob:
    """An entry from the chosen token's log-probability and the (token, logprob) best list."""

    def alt(token_id: int, value: float) -> Alternative:
        raw = piece(token_id)
        return Alternative(raw.decode("utf-8", errors="replace"), value, raw)

    return TokenLogprob(alt(token, logprob), tuple(alt(t, v) for t, v in top))


def entry(logprobs: np.ndarray[Any, Any], token: int, k: int,
          piece: Callable[[int], bytes]) -> TokenLogprob:
    """The entry for `token`, with the `k` most likely tokens (most likely first)."""
    top: list[tuple[int, float]] = []
    if k > 0:
        best = np.argpartition(-logprobs, k - 1)[:k]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        top = [(int(t), float(logprobs[t])) for t in best]
    return make_entry(token, float(logprobs[token]), top, piece)


class LogprobBuffer:
    """Holds each token's entry until the text delta it belongs to goes out.

    Text leaves the engine later than its tokens (a partial character or a possible stop
    string is held back), so entries wait here and ride on the next delta. Entries still
    waiting at the end (the end-of-turn token, a stop string's tokens) produced no text and
    are dropped, as OpenAI's answers do not list them either.
    """

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self._pending: list[TokenLogprob] = []

    def add(self, item: TokenLogprob) -> None:
        """Record one generated token's entry (engine thread)."""
        self._pending.append(item)

    def emit(self, event: Event) -> None:
        """Pass an event on; a delta takes the entries recorded since the last one."""
        if isinstance(event, Delta) and self._pending:
            event = Delta(event.text, (*event.logprobs, *self._pending))
            self._pending = []
        elif isinstance(event, Finished):
            self._pending = []
        self._emit(event)
