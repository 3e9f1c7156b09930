"""Which OpenAI request fields each engine honours (chat completions, embeddings), and a 400
for the rest.

A field that changes the answer is either served or refused by name (400
`unsupported_parameter`, `param` naming it): a client that asked for tool calls, JSON or
log-probabilities must never get a 200 that quietly did without them. Fields that only carry
bookkeeping for OpenAI's own platform (`user`, `metadata`, ...) change nothing in an answer
and are accepted. A field OpenAI does not document is refused too, as OpenAI refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ai_space.errors import Unsupported
from ai_space.protocols import EngineName
from ai_space.schema import ChatCompletionRequest, EmbeddingRequest

# Served by both engines (validated in schema.py; on transformers the logit shaping is in
# ai_space/shaping.py, on llama.cpp llama-server's own sampler does it).
SERVED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stream", "stream_options", "stop", "seed", "n", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias",
})
# Served by the llama.cpp engine only, passed on to llama-server: its grammar sampler
# constrains JSON, and with --jinja it renders tools into the prompt and parses tool calls
# (streamed too) out of the answer.
LLAMA_ONLY = frozenset({"response_format", "tools", "tool_choice"})
# Bookkeeping for OpenAI's platform (storage, caching, abuse tracking, billing tiers): they
# never change the text of an answer, so accepting them drops nothing a caller would miss.
BOOKKEEPING = frozenset({
    "user", "metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options", "store", "service_tier", "parallel_tool_calls", "modalities",
})
# Documented features no engine here has: the reason goes into the 400's message.
REFUSED = {
    "functions": "the models here are not served with function calling",
    "function_call": "the models here are not served with function calling",
    "audio": "text output only",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "no web search",
    "moderation": "no moderation runs here",
    "reasoning_effort": "the models here are not reasoning models",
    "verbosity": "answer length is set by max_tokens only",
}
_TOOLS_WHY = "tool calling needs the llama.cpp engine (the transformers engine has no tool parser)"
DOCUMENTED = SERVED | LLAMA_ONLY | BOOKKEEPING | frozenset(REFUSED)

_TRANSFORMERS_WHY = ("JSON output needs a grammar, which the transformers engine does not have "
                     "(the llama.cpp engine does)")


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


# Values that ask for nothing beyond what every answer already is; any other value is refused.
_HARMLESS: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    "n": lambda v, _: v == 1,
    "store": lambda v, _: v is False,
    "service_tier": lambda v, _: v in {"auto", "default"},
    "modalities": lambda v, _: v == ["text"],
    "reasoning_effort": lambda v, _: v == "none",
    "functions": lambda v, _: v == [],
    # "none", or "auto" with no tools to choose from, both mean a plain text answer.
    "function_call": lambda v, f: v == "none" or (v == "auto" and _empty(f.get("functions"))),
}

# On the transformers engine, values that leave the output free text.
_TRANSFORMERS_HARMLESS: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    "response_format": lambda v, _: v.type == "text",
    "tools": lambda v, _: v == [],
    # "none", or "auto" with no tools to choose from, both mean a plain text answer.
    "tool_choice": lambda v, f: v == "none" or (v == "auto" and _empty(f.get("tools"))),
}


def _why_refused(name: str, value: Any, fields: dict[str, Any], engine: EngineName) -> str | None:
    if name not in DOCUMENTED:
        return "not an OpenAI chat completions field"
    harmless = _HARMLESS.get(name)
    if harmless is not None:
        if harmless(value, fields):
            return None
        if name == "n":
            return "one choice per request (n=1)"
        return REFUSED.get(name, f"only the default value is served, not {value!r}")
    if name in REFUSED:
        return REFUSED[name]
    if name in LLAMA_ONLY and engine != "llama.cpp" and \
            not _TRANSFORMERS_HARMLESS[name](value, fields):
        return _TRANSFORMERS_WHY if name == "response_format" else _TOOLS_WHY
    return None


# Message keys besides role and content that are accepted: `name` tells participants apart,
# but the chat templates here have no place for it; `annotations` (citations) are what the
# openai client dumps back with an assistant turn. Any other key is refused unless null or
# empty (the client dumps `tool_calls`, `audio`, `refusal` as null).
_MESSAGE_ACCEPTED = frozenset({"name", "annotations"})


# On llama.cpp, a past turn's tool calls and a tool's answer are rendered by the template.
_MESSAGE_LLAMA = frozenset({"tool_calls", "tool_call_id"})


def _check_messages(body: ChatCompletionRequest, engine: EngineName) -> None:
    accepted = _MESSAGE_ACCEPTED | (_MESSAGE_LLAMA if engine == "llama.cpp" else frozenset())
    for i, message in enumerate(body.messages):
        if message.role == "tool" and engine != "llama.cpp":
            raise Unsupported(f"messages[{i}].role", _TOOLS_WHY)
        for key, value in sorted((message.model_extra or {}).items()):
            if key not in accepted and not _empty(value):
                why = (_TOOLS_WHY if key in _MESSAGE_LLAMA
                       else "functions are not served: use tools"
                       if key == "function_call"
                       else "only text content is rendered into the prompt")
                raise Unsupported(f"messages[{i}].{key}", why)


def check_fields(body: ChatCompletionRequest, engine: EngineName) -> None:
    """Raise Unsupported for the first field this engine cannot honour; null means absent."""
    _check_messages(body, engine)
    fields = {name: getattr(body, name) for name in body.model_fields_set
              if name in type(body).model_fields}
    fields.update(body.model_extra or {})
    for name in sorted(fields):
        value = fields[name]
        if value is None:
            continue
        why = _why_refused(name, value, fields, engine)
        if why is not None:
            raise Unsupported(name, why)


def check_embedding_fields(body: EmbeddingRequest) -> None:
    """Raise Unsupported for a field the embeddings route does not know (`user` is kept)."""
    for name, value in sorted((body.model_extra or {}).items()):
        if name != "user" and value is not None:
            raise Unsupported(name, "not an OpenAI embeddings field")


def check_dimensions(body: EmbeddingRequest, width: int) -> None:
    """Raise Unsupported when `dimensions` asks for another width than the model's."""
    if body.dimensions is not None and body.dimensions != width:
        # Cutting a vector short only works for models trained for it (Matryoshka); MiniLM
        # was not, so a shorter vector would be a worse one, not a smaller equal.
        raise Unsupported("dimensions", f"the embedding model's vectors are {width} wide")
