"""Sentence embeddings on llama.cpp: mean-pooled, L2-normalised, like sentence-transformers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from ai_space.llama.bert_gguf import cached_gguf
from ai_space.llama.model import Vocab, load_gguf
from ai_space.models.packaged import resolve

_FALLBACK_MAX_SEQ = 512
_MAX_SEQS = 16  # texts per llama.cpp call


def max_seq_length(folder: Path | None, train_context: int) -> int:
    """The truncation length: sentence_bert_config.json's, else the model's own context."""
    if folder is not None:
        config = folder / "sentence_bert_config.json"
        if config.is_file():
            value = json.loads(config.read_text()).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                return min(value, train_context)
    return min(train_context, _FALLBACK_MAX_SEQ)


class GGUFEmbedder:
    """Embeds texts with an encoder GGUF. Thread-safe: one llama.cpp call at a time."""

    def __init__(self, path: Path, max_length: int | None, threads: int = 1) -> None:
        self.model = load_gguf(path)
        self.vocab = Vocab(self.model)
        train = int(llama_cpp.llama_model_n_ctx_train(self.model))
        self.max_length = min(max_length or train, train)
        self.dimensions = int(llama_cpp.llama_model_n_embd(self.model))
        self.sep = int(llama_cpp.llama_vocab_sep(self.vocab.vocab))
        # An encoder sees a whole text in one pass: a batch must hold the longest input. Its
        # attention scores grow with the square of the batch, so keep it small (2 x 256).
        self.n_batch = max(512, self.max_length)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = _MAX_SEQS
        params.kv_unified = True  # no KV cache for an encoder; this keeps n_ctx as given
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = True
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create an embedding context")
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, _MAX_SEQS)
        self._lock = threading.Lock()

    def tokens(self, text: str) -> list[int]:
        """[CLS] text [SEP], cut to max_length with [SEP] kept last (as transformers does)."""
        ids = self.vocab.encode(text, add_special=True)
        if len(ids) > self.max_length:
            ids = [*ids[:self.max_length - 1], self.sep]
        return ids

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens the inputs take after truncation (for `usage`)."""
        return sum(len(self.tokens(t)) for t in texts)

    def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        """Embed texts: float32 array (len(texts), dimensions) of unit-length rows."""
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        group: list[tuple[int, list[int]]] = []
        used = 0
        for index, text in enumerate(texts):
            ids = self.tokens(text)
            if group and (used + len(ids) > self.n_batch or len(group) == _MAX_SEQS):
                self._run(group, out)
                group, used = [], 0
            group.append((index, ids))
            used += len(ids)
        if group:
            self._run(group, out)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: np.ndarray[Any, Any] = out / np.maximum(norms, 1e-12)
        return unit

    def _run(self, group: list[tuple[int, list[int]]], out: np.ndarray[Any, Any]) -> None:
        with self._lock:
            batch = self._batch
            n = 0
            for seq, (_, ids) in enumerate(group):
                for pos, token in enumerate(ids):
                    batch.token[n], batch.pos[n] = token, pos
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq
                    batch.logits[n] = True
                    n += 1
            batch.n_tokens = n
            rc = llama_cpp.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama.cpp embedding failed ({rc})")
            for seq, (index, _) in enumerate(group):
                pointer = llama_cpp.llama_get_embeddings_seq(self.ctx, seq)
                if not pointer:
                    raise RuntimeError("llama.cpp returned no pooled embedding")
                out[index] = np.ctypeslib.as_array(pointer, shape=(self.dimensions,))


def load_gguf_embedder(model_id: str) -> GGUFEmbedder:
    """Load an embedding model for llama.cpp, converting its folder to GGUF on first use.

    One thread, on purpose. Embeddings run on the server's request threads, and llama.cpp
    parallelises with OpenMP: a second multi-threaded caller adds a second OpenMP team, and
    once a process has more OpenMP threads than CPUs, libgomp stops spinning at barriers and
    sleeps instead, for every team. Measured on 2 cores: chat fell from 112 to 76 tok/s for
    good after one embeddings call with 2 threads. With one thread there is no second team.
    """
    folder = resolve(model_id, None).local_folder
    path = cached_gguf(model_id)
    return GGUFEmbedder(path, max_seq_length(folder, 1 << 30), threads=1)
