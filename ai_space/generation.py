"""One generation request: its sampling settings, its text assembly, and its events."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported where used: the llama.cpp engine serves without loading torch at all.
    import torch


@dataclass(frozen=True)
class Alternative:
    """One candidate token: its text, its log-probability and its UTF-8 bytes."""

    token: str
    logprob: float
    raw: bytes

    def as_openai(self) -> dict[str, Any]:
        """The `{"token", "logprob", "bytes"}` object."""
        return {"token": self.token, "logprob": self.logprob, "bytes": list(self.raw)}


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token and, when asked for, the most likely tokens at its position."""

    chosen: Alternative
    top: tuple[Alternative, ...] = ()

    def as_openai(self) -> dict[str, Any]:
        """One entry of `logprobs.content`."""
        return {**self.chosen.as_openai(), "top_logprobs": [t.as_openai() for t in self.top]}


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request. temperature 0 means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Logit shaping (ai_space/shaping.py): the transformers engine's; llama-server does its own.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: off; else how many alternatives per token (0-20)

    @property
    def shaped(self) -> bool:
        """Whether anything beyond temperature and top_p touches this request's logits."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias
                    or self.logprobs is not None)


@dataclass(frozen=True)
class Delta:
    """New text for the client, with the log-probabilities of its tokens when asked for."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The request is over. finish_reason: stop, length, cancelled or error."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    batch_size: int = 0  # how many requests were prefilled together with this one


Event = Delta | Finished


def pick_next(logits: torch.Tensor, params: SamplingParams,
              generator: torch.Generator | None) -> int:
    """Choose the next token from one row of logits: greedy, or temperature and top-p."""
    import torch

    if params.temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):
        # A temperature so small (5e-324 is valid input) that logits / temperature overflows
        # to inf makes softmax NaN, and multinomial raise; in the limit it is greedy.
        return int(torch.argmax(logits).item())
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set whose mass reaches top_p; the top token always stays.
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class TextTracker:
    """Turns generated token ids into text deltas that are safe to send.

    It holds back text that may still change: a byte-level token that ends mid-character
    (decodes to U+FFFD), and a tail that could be the start of a stop string.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self._prefix = 0  # ids before this were decoded as context only
        self._read = 0  # ids before this have been turned into text
        self.text = ""  # all text decoded so far
        self.sent = 0  # how much of `text` the client has
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token_id: int) -> str:
        """Add a token; return the text that may now be sent (maybe empty)."""
        self.ids.append(token_id)
        # Decode a short window, not the whole answer, so each step costs the same.
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def flush(self) -> str:
        """The held-back text, at the end of generation."""
        if self._read < len(self.ids) and not self.stopped:
            before = self._decode(self.ids[self._prefix:self._read])
            after = self._decode(self.ids[self._prefix:])
            self.text += after[len(before):]
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        for stop in self.stop:
            # Search from just before what was sent: a stop string can straddle two deltas.
            found = self.text.find(stop, max(0, self.sent - len(stop) + 1))
            if found != -1 and found < end:
                end = found
                self.stopped = True
        if not self.stopped and not final:
            end -= self._stop_prefix_overlap()
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def _stop_prefix_overlap(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        best = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:size]):
                    best = size
                    break
        return best


@dataclass
class GenerationJob:
    """One request as the batcher sees it. `emit` must be safe to call from any thread."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    batch_size: int = 0
    # Receives each generated token's log-probabilities (params.logprobs); engine thread.
    on_logprob: Callable[[TokenLogprob], None] | None = None

    def generator(self) -> torch.Generator | None:
        """A seeded torch generator when the request gave a seed, else None (global RNG)."""
        if self.params.seed is None:
            return None
        import torch

        return torch.Generator().manual_seed(self.params.seed)
