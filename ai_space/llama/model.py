"""A GGUF chat model loaded by llama.cpp: weights, vocabulary, chat template and tokenizer."""

from __future__ import annotations

import ctypes
import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ai_space.prefill import continues_final, cut_after_final

log = logging.getLogger("ai_space")

_backend_ready = False
_backend_lock = threading.Lock()


def init_backend() -> None:
    """Load llama.cpp's backends once per process, and keep its chatter out of the log."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        # llama-cpp-python prints every llama.cpp log line unless its logger is raised.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        llama_cpp.llama_backend_init()
        _backend_ready = True


def load_gguf(path: Path, *, embeddings: bool = False, repack: bool = True) -> Any:
    """Load a GGUF file's weights (memory-mapped, so pages are shared and read on demand);
    with `repack`, the CPU backend may copy the tensors it has kernels for into interleaved
    blocks (Q4_0 and IQ4_NL on AVX2)."""
    init_backend()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    params = llama_cpp.llama_model_default_params()
    params.use_mmap = True
    params.use_extra_bufts = repack
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not load {path.name}")
    return model


def meta(model: Any, key: str) -> str | None:
    """A GGUF metadata value as text, or None when the file does not have the key."""
    size = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _template_env() -> ImmutableSandboxedEnvironment:
    # The same environment transformers renders chat templates in, so the prompt text matches.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class Vocab:
    """Tokenize and detokenize with the model's own vocabulary. Safe to use from any thread."""

    def __init__(self, model: Any) -> None:
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.size = int(llama_cpp.llama_vocab_n_tokens(self.vocab))

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """Text -> token ids; special tokens written in the text (<|im_start|>) are parsed."""
        data = text.encode("utf-8")
        room = len(data) + 8
        while True:
            out = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), out, room, add_special,
                                         True)
            if n >= 0:
                return list(out[:n])
            room = -n

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Token ids -> text; an unfinished UTF-8 sequence at the end decodes to U+FFFD."""
        if not ids:
            return ""
        tokens = (llama_cpp.llama_token * len(ids))(*ids)
        room = 16 * len(ids) + 16
        while True:
            buf = ctypes.create_string_buffer(room)
            n = llama_cpp.llama_detokenize(self.vocab, tokens, len(ids), buf, room,
                                           skip_special_tokens, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            room = -n + 1

    def piece(self, token: int) -> str:
        """One token's text with special tokens shown (for names like the BOS token)."""
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        """Whether the token ends a turn (EOS, EOT, <|im_end|> and the like)."""
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))


class GGUFChatModel:
    """The llama.cpp side of a chat model: weights, vocabulary and prompt formatting."""

    def __init__(self, path: Path, *, repack: bool = True) -> None:
        self.path = path
        self.model = load_gguf(path, repack=repack)
        self.vocab = Vocab(self.model)
        self.train_context = int(llama_cpp.llama_model_n_ctx_train(self.model))
        source = meta(self.model, "tokenizer.chat_template")
        if source is None:
            from ai_space.models.loading import FALLBACK_TEMPLATE
            log.warning("GGUF has no chat template; using a plain 'role: content' format")
            source = FALLBACK_TEMPLATE
        self.template = _template_env().from_string(source)
        self.eos_ids = frozenset(t for t in range(self.vocab.size) if self.vocab.is_eog(t))
        self._specials = {name: self._special(key) for name, key in
                          (("bos_token", "tokenizer.ggml.bos_token_id"),
                           ("eos_token", "tokenizer.ggml.eos_token_id"),
                           ("pad_token", "tokenizer.ggml.padding_token_id"),
                           ("unk_token", "tokenizer.ggml.unknown_token_id"))}

    def _special(self, key: str) -> str:
        value = meta(self.model, key)
        return self.vocab.piece(int(value)) if value is not None and value.isdigit() else ""

    def prompt_text(self, turns: list[dict[str, str]]) -> str:
        """The chat template applied to the turns, ready for the assistant's answer: a new
        turn, or the continuation of a trailing assistant message (a prefill)."""
        if continues_final(turns):
            rendered = self.template.render(messages=turns, add_generation_prompt=False,
                                            **self._specials)
            return cut_after_final(rendered, turns[-1]["content"])
        return self.template.render(messages=turns, add_generation_prompt=True,
                                    **self._specials)

    def prompt_ids(self, turns: list[dict[str, str]]) -> list[int]:
        """Format turns with the model's chat template and tokenize them (no extra BOS)."""
        # The template places BOS (if the model wants one) and role markers itself,
        # as transformers' apply_chat_template does: never add them a second time.
        return self.vocab.encode(self.prompt_text(turns), add_special=False)

    def close(self) -> None:
        """Free the weights."""
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
