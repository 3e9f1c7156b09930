"""Per-request logit shaping on the llama.cpp engine: logit_bias, presence and frequency
penalties, log-probabilities, and a JSON grammar (response_format) through llama.cpp's own
grammar sampler.

The engine calls two hooks around its sampler for a request that needs them:
`before(logits)` records the model's log-probabilities and adds biases and penalties to the
logits in place; `after(token, logits, repick)` lets the grammar veto the token picked (then
the logits are masked to what the grammar allows and the sampler picks again), feeds the
grammar and the penalty counts, and hands the token's log-probability on.

Checking the picked token first, and masking the whole vocabulary only when the grammar
refuses it, is llama.cpp's own shortcut (common/sampling.cpp): a grammar check per candidate
costs microseconds, and most tokens a model picks inside JSON are already allowed. It keeps
the distribution exact: a token is kept with its unconstrained probability p, and picked
again with probability p / Z when the first pick was refused (Z: the mass the grammar allows),
which sums to p / Z, the constrained distribution.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from ai_space.errors import BadRequest
from ai_space.generation import GenerationJob, SamplingParams
from ai_space.llama.model import GGUFChatModel
from ai_space.logprobs import entry, log_softmax
from ai_space.schema import ResponseFormat

# llama_token_data {int32 id; float logit; float p}: 12 bytes, no padding.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
# Repetition counts (minItems, maxLength, ...) that llama.cpp would expand into grammar
# rules (nested 256 deep at most); past this a schema could make it build millions of them.
_MAX_REPEAT = 256


def _bounded(node: Any) -> bool:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"minItems", "maxItems", "minLength", "maxLength", "minProperties",
                       "maxProperties"} and isinstance(value, int) and value > _MAX_REPEAT:
                return False
            if not _bounded(value):
                return False
    elif isinstance(node, list):
        return all(_bounded(v) for v in node)
    return True


def grammar_for(fmt: ResponseFormat | None) -> str | None:
    """GBNF for a response_format (None for text), or BadRequest naming response_format."""
    if fmt is None or fmt.type == "text":
        return None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    # json_object: any JSON object. json_schema: llama.cpp's own schema converter.
    schema: dict[str, Any] = {"type": "object"}
    if fmt.type == "json_schema" and fmt.json_schema is not None:
        schema = fmt.json_schema.schema_ or {"type": "object"}
    if not _bounded(schema):
        raise BadRequest(f"response_format: schema repetition counts above {_MAX_REPEAT} are "
                         "not supported", code="invalid_json_schema", param="response_format")
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        # The converter is third-party code walking the caller's schema, and fails on what
        # it does not handle in many ways (KeyError, TypeError, RecursionError, ...): each
        # is the caller's input, so a 400 naming the field, not a 500.
        raise BadRequest(f"response_format: this JSON schema cannot be turned into a grammar "
                         f"({type(exc).__name__})", code="invalid_json_schema",
                         param="response_format") from None


class Grammar:
    """llama.cpp's grammar sampler for one request; engine thread only."""

    def __init__(self, vocab: Any, gbnf: str) -> None:
        self._ptr = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self._ptr:
            raise BadRequest("response_format: llama.cpp could not parse the grammar made "
                             "from this schema", code="invalid_json_schema",
                             param="response_format")
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._all: np.ndarray[Any, Any] | None = None

    def _apply(self, data: np.ndarray[Any, Any]) -> None:
        array = llama_cpp.llama_token_data_array(
            data.ctypes.data_as(llama_cpp.llama_token_data_p), len(data), -1, False)
        llama_cpp.llama_sampler_apply(self._ptr, ctypes.byref(array))

    def allows(self, token: int) -> bool:
        """Whether the grammar lets `token` come next."""
        self._one[0] = (token, 0.0, 0.0)
        self._apply(self._one)
        return bool(np.isfinite(self._one["logit"][0]))

    def mask(self, logits: np.ndarray[Any, Any]) -> None:
        """Set every token the grammar refuses to -inf, in place."""
        if self._all is None or len(self._all) != len(logits):
            self._all = np.zeros(len(logits), dtype=_TOKEN_DATA)
            self._all["id"] = np.arange(len(logits), dtype=np.int32)
        self._all["logit"] = logits
        self._apply(self._all)
        logits[:] = self._all["logit"]

    def accept(self, token: int) -> None:
        """Advance the grammar past `token` (which it must allow)."""
        llama_cpp.llama_sampler_accept(self._ptr, token)

    def close(self) -> None:
        """Free the sampler."""
        if self._ptr:
            llama_cpp.llama_sampler_free(self._ptr)
            self._ptr = None


class Pieces:
    """Each token's UTF-8 bytes, cached (the vocabulary never changes)."""

    def __init__(self, chat: GGUFChatModel) -> None:
        self._vocab = chat.vocab.vocab
        self._cache: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)

    def __call__(self, token: int) -> bytes:
        """The token's text as bytes (special tokens as empty)."""
        raw = self._cache.get(token)
        if raw is None:
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buf, 256, 0, False)
            raw = self._buf.raw[:max(n, 0)]
            self._cache[token] = raw
        return raw


def check(params: SamplingParams, chat: GGUFChatModel) -> None:
    """BadRequest for what the engine would only find out later: unknown token ids in
    logit_bias, a grammar llama.cpp cannot parse."""
    for token, _ in params.logit_bias:
        if token >= chat.vocab.size:
            raise BadRequest(f"logit_bias: token id {token} is outside the vocabulary "
                             f"(0-{chat.vocab.size - 1})", param="logit_bias")
    if params.grammar:
        Grammar(chat.vocab.vocab, params.grammar).close()


class Shaper:
    """What one request does to its logits, around the engine's own sampler."""

    def __init__(self, job: GenerationJob, chat: GGUFChatModel, pieces: Pieces) -> None:
        params = job.params
        self.params = params
        self.eos_ids = chat.eos_ids
        self.pieces = pieces
        self.sink = job.on_logprob
        self.bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int64)
        self.bias = np.array([b for _, b in params.logit_bias], dtype=np.float32)
        self.counts: dict[int, int] = {}
        self.grammar = Grammar(chat.vocab.vocab, params.grammar) if params.grammar else None
        self.logprobs: np.ndarray[Any, Any] | None = None

    def pick(self, logits_ptr: Any, n_vocab: int, pick: Callable[[Any, int], int]) -> int:
        """Shape the logits behind `logits_ptr` in place, and pick with the engine's `pick`."""
        if not logits_ptr:
            raise RuntimeError("llama.cpp returned no logits for this request")
        logits = np.ctypeslib.as_array(
            ctypes.cast(logits_ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        self.before(logits)
        return self.after(pick(logits_ptr, n_vocab), logits, lambda: pick(logits_ptr, n_vocab))

    def before(self, logits: np.ndarray[Any, Any]) -> None:
        """Record the model's log-probabilities, then add biases and penalties in place."""
        if self.params.logprobs is not None:
            self.logprobs = log_softmax(logits)
        if len(self.bias_ids):
            logits[self.bias_ids] += self.bias
        if self.counts and (self.params.presence_penalty or self.params.frequency_penalty):
            ids = np.fromiter(self.counts, dtype=np.int64, count=len(self.counts))
            seen = np.fromiter(self.counts.values(), dtype=np.float32, count=len(self.counts))
            # OpenAI's formula: each count costs frequency_penalty, being seen presence_penalty.
            logits[ids] -= seen * self.params.frequency_penalty + self.params.presence_penalty

    def after(self, token: int, logits: np.ndarray[Any, Any], repick: Callable[[], int]) -> int:
        """The token to keep: the grammar may refuse it, and then the sampler picks again."""
        if self.grammar is not None and not self.grammar.allows(token):
            self.grammar.mask(logits)
            if not np.isfinite(logits).any():
                raise RuntimeError("the grammar allows no token here")
            token = repick()
        if token in self.eos_ids:
            return token  # the answer ends here: nothing to feed or report
        if self.grammar is not None:
            self.grammar.accept(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.sink is not None and self.logprobs is not None:
            self.sink(entry(self.logprobs, token, self.params.logprobs or 0, self.pieces))
        return token

    def close(self) -> None:
        """Free the grammar sampler."""
        if self.grammar is not None:
            self.grammar.close()
