"""OpenAI request models, and builders for the answers the openai client parses."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Inside messages and options, keys we do not use are ignored; the request's own top-level
# fields are kept (extra="allow") so that ai_space/request_fields.py can refuse, by name, every
# field the server does not honour instead of dropping it.
_LENIENT = ConfigDict(extra="ignore")


class TextPart(BaseModel):
    """One text part of a message's content list."""

    model_config = _LENIENT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat turn. `developer` is OpenAI's newer name for `system`."""

    # Kept, so a tool call or audio in a past turn is refused by name (request_fields.py).
    model_config = ConfigDict(extra="allow")
    # `tool` (a tool's answer) is served on llama.cpp only (request_fields.py).
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @model_validator(mode="after")
    def _valid_unicode(self) -> ChatMessage:
        # JSON can escape a lone surrogate ("\ud800"); the tokenizer raises on it.
        try:
            self.text().encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("content holds an unpaired surrogate (not valid Unicode)") from None
        return self

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_template_turn(self) -> dict[str, str]:
        """The turn as the chat template expects it."""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` is meaningful here."""

    model_config = _LENIENT
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema the answer must follow."""

    model_config = _LENIENT
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: free text, any JSON object, or JSON following a schema."""

    model_config = _LENIENT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # torch.Generator.manual_seed takes a signed or unsigned 64-bit seed.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    # n > 1 is refused by name (request_fields.py), not by a validation error.
    n: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=1024)
    response_format: ResponseFormat | None = None

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            valid_id = key.isascii() and key.isdigit() and len(key) <= 9
            if not valid_id or not -100.0 <= bias <= 100.0:
                raise ValueError("logit_bias maps token ids (digits) to values in [-100, 100]")
        return value

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        """The stop sequences as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings. Token-id inputs are not accepted, only text."""

    # Unknown fields are kept so request_fields.py can refuse them by name.
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        """The inputs as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


def new_completion_id() -> str:
    """A fresh OpenAI-style completion id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage block."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish_reason: str,
               prompt_tokens: int, completion_tokens: int,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A non-streamed `chat.completion` object."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason, "logprobs": logprobs}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(cid: str, model: str, created: int, delta: dict[str, str],
          finish_reason: str | None = None, *,
          logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` of a stream."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                         "logprobs": logprobs}]}


def usage_chunk(cid: str, model: str, created: int, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    """The final chunk that `stream_options.include_usage` asks for: no choices, only usage."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def model_card(name: str, created: int) -> dict[str, Any]:
    """One entry of /v1/models."""
    return {"id": name, "object": "model", "created": created, "owned_by": "ai_space"}
