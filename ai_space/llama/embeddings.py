"""Sentence embeddings on the embeddings engine (`llama-server --embeddings --pooling mean`).

llama-server mean-pools over the input's tokens and L2-normalises, as sentence-transformers
does for all-MiniLM-L6-v2; what it does not do is truncate. sentence-transformers cuts each
input at `max_seq_length` (256 for MiniLM) keeping [SEP] last, so an input that may be longer
is tokenized first (`/tokenize`, with [CLS] and [SEP]), cut the same way, and sent as token
ids. An input of fewer characters than that cannot be longer (a WordPiece token covers at
least one character) and goes as text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ai_space.llama.client import EngineClient

_FALLBACK_MAX_SEQ = 512


def max_seq_length(folder: Path | None) -> int:
    """The truncation length: sentence_bert_config.json's, else 512."""
    if folder is not None:
        config = folder / "sentence_bert_config.json"
        if config.is_file():
            value = json.loads(config.read_text()).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                return min(value, _FALLBACK_MAX_SEQ)
    return _FALLBACK_MAX_SEQ


class LlamaEmbeddings:
    """Unit-length sentence vectors from the embeddings engine."""

    def __init__(self, engine: EngineClient, max_length: int) -> None:
        self.engine = engine
        self.max_length = max_length

    async def _input(self, text: str) -> str | list[int]:
        if len(text) + 2 <= self.max_length:
            return text
        ids = (await self.engine.post("/tokenize", {"content": text, "add_special": True,
                                                    "parse_special": False}))["tokens"]
        if len(ids) > self.max_length:
            ids = [*ids[:self.max_length - 1], ids[-1]]  # [SEP] stays last
        return [int(i) for i in ids]

    async def embed(self, texts: list[str]) -> tuple[np.ndarray[Any, Any], int]:
        """(vectors, tokens): float32 rows in input order, and the tokens they took."""
        inputs = [await self._input(t) for t in texts]
        if any(isinstance(i, list) for i in inputs):
            # One input list holds prompts of one kind: all token ids, or all text.
            inputs = [i if isinstance(i, list) else await self._tokens(i) for i in inputs]
        answer = await self.engine.post("/v1/embeddings", {"input": inputs,
                                                           "encoding_format": "float"})
        rows = sorted(answer["data"], key=lambda d: int(d["index"]))
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        return vectors, int(answer.get("usage", {}).get("prompt_tokens", 0))

    async def _tokens(self, text: str) -> list[int]:
        answer = await self.engine.post("/tokenize", {"content": text, "add_special": True,
                                                      "parse_special": False})
        return [int(i) for i in answer["tokens"]]
