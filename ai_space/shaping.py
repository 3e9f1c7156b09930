"""Per-request logit shaping on the transformers engine: logit_bias, presence and frequency
penalties, and log-probabilities (on llama.cpp, llama-server's sampler does all of it; a JSON
grammar has no counterpart here, so request_fields.py refuses it on this engine).

Around the batcher's own sampler: `before` records the model's log-probabilities and adds
biases and penalties to a copy of the row's logits; `after` counts the token picked for the
penalties and hands its log-probability on.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ai_space.errors import BadRequest
from ai_space.generation import GenerationJob, SamplingParams
from ai_space.logprobs import make_entry


def check(params: SamplingParams, vocab_size: int) -> None:
    """BadRequest for a logit_bias token id outside the model's vocabulary."""
    for token, _ in params.logit_bias:
        if token >= vocab_size:
            raise BadRequest(f"logit_bias: token id {token} is outside the vocabulary "
                             f"(0-{vocab_size - 1})", param="logit_bias")


def _byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer is byte-level BPE (GPT-2's byte-to-character alphabet)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" \
        else [decoder]
    return any(part.get("type") == "ByteLevel" for part in parts)


def _unicode_to_byte() -> dict[str, int]:
    # GPT-2's table: printable bytes stand for themselves, the rest map to 256 + n.
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    table = {chr(b): b for b in keep}
    table.update({chr(256 + n): b for n, b in enumerate(extra)})
    return table


class Pieces:
    """Each token's UTF-8 bytes, cached: exact for byte-level BPE and `<0xNN>` byte tokens
    (a token may end mid-character), else the token decoded alone."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._bytes = _unicode_to_byte() if _byte_level(tokenizer) else None
        self._cache: dict[int, bytes] = {}

    def _raw(self, token: int) -> bytes:
        piece = str(self.tokenizer.convert_ids_to_tokens(token))
        if token in self.tokenizer.all_special_ids:
            return b""
        if self._bytes is not None and all(c in self._bytes for c in piece):
            return bytes(self._bytes[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return str(self.tokenizer.decode([token])).encode("utf-8")

    def __call__(self, token: int) -> bytes:
        """The token's bytes."""
        raw = self._cache.get(token)
        if raw is None:
            raw = self._cache[token] = self._raw(token)
        return raw


class RowShaper:
    """What one request does to its logits, around the batcher's own sampler."""

    def __init__(self, job: GenerationJob, pieces: Pieces, eos_ids: set[int]) -> None:
        self.params = job.params
        self.sink = job.on_logprob
        self.pieces = pieces
        self.eos_ids = eos_ids
        self.counts: dict[int, int] = {}
        self._logprobs: torch.Tensor | None = None

    def before(self, logits: torch.Tensor) -> torch.Tensor:
        """Record the model's log-probabilities; the logits with biases and penalties added
        (a copy: `logits` is a view of the batch's output)."""
        params = self.params
        shaped = logits.float()
        self._logprobs = (torch.log_softmax(shaped, dim=-1) if params.logprobs is not None
                          else None)
        penalise = bool(self.counts) and bool(params.presence_penalty or
                                              params.frequency_penalty)
        if params.logit_bias or penalise:
            shaped = shaped.clone()
        if params.logit_bias:
            ids = torch.tensor([t for t, _ in params.logit_bias], device=shaped.device)
            shaped.index_add_(0, ids, torch.tensor([b for _, b in params.logit_bias],
                                                   device=shaped.device))
        if penalise:
            ids = torch.tensor(list(self.counts), device=shaped.device)
            seen = torch.tensor(list(self.counts.values()), dtype=torch.float32,
                                device=shaped.device)
            # OpenAI's formula: each count costs frequency_penalty, being seen presence.
            shaped.index_add_(0, ids, -(seen * params.frequency_penalty
                                        + params.presence_penalty))
        return shaped

    def after(self, token: int) -> int:
        """Count the token picked for the penalties and report its log-probability."""
        if token in self.eos_ids:
            return token  # the answer ends here: nothing to count or report
        self.counts[token] = self.counts.get(token, 0) + 1
        if self._logprobs is not None and self.sink is not None:
            # Only k + 1 numbers leave the device, not the whole vocabulary's row.
            top: list[tuple[int, float]] = []
            if self.params.logprobs:
                values, ids = torch.topk(self._logprobs, self.params.logprobs)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            self.sink(make_entry(token, float(self._logprobs[token]), top, self.pieces))
        return token
