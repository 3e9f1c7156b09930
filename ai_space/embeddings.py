"""Sentence embeddings the way sentence-transformers computes them for all-MiniLM-L6-v2.

That model's pipeline is Transformer -> Pooling(mean over real tokens) -> Normalize, with
inputs truncated to `max_seq_length` (256, from sentence_bert_config.json).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

# The tokenizer's own limit applies when the folder has no sentence-transformers config.
_FALLBACK_MAX_SEQ = 512
_BATCH = 32  # inputs per forward pass: bounds memory for long input lists


def max_seq_length(folder: Path | None, tokenizer: Any) -> int:
    """The truncation length: sentence_bert_config.json's, else the tokenizer's (capped)."""
    if folder is not None:
        config = folder / "sentence_bert_config.json"
        if config.is_file():
            value = json.loads(config.read_text()).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", _FALLBACK_MAX_SEQ)
    return int(min(limit, _FALLBACK_MAX_SEQ))


class Embedder:
    """Mean-pooled, L2-normalised embeddings from an encoder model. Thread-safe."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dimensions = int(model.config.hidden_size)
        # One forward pass at a time: torch already uses every core for one batch.
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens the inputs take after truncation (for `usage`)."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Embed texts: a float32 tensor of shape (len(texts), dimensions), unit length rows."""
        parts = [self._embed_batch(texts[i:i + _BATCH]) for i in range(0, len(texts), _BATCH)]
        return torch.cat(parts) if parts else torch.empty((0, self.dimensions))

    @torch.inference_mode()
    def _embed_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.model.device)
        with self._lock:
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over real tokens only; the clamp guards an all-padding row against 0/0.
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu()
