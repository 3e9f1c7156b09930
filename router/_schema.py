"""Request models for every endpoint, and the limits that protect the backends."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router._bounds import check_body, check_chat_fields
from router._config import Settings
from router._errors import BadRequest

M = TypeVar("M", bound=BaseModel)


# Every chat-completions field OpenAI documents that the router does not own itself: each goes
# to the backend exactly as the caller sent it. The router owns `model`, `messages`, `n`,
# `stream`, `stream_options` and the token limits, and checks them; any other field is refused
# by name (nothing is dropped silently).
PASSED_FIELDS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "metadata", "modalities", "moderation", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
    "store", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options",
})


class TextPart(BaseModel):
    """One part of a multi-part message; only text is supported. Other keys pass unchanged."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One OpenAI chat message; its other keys (`tool_calls`, `tool_call_id`, `name`, ...)
    pass to the backend unchanged."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def upstream(self) -> dict[str, Any]:
        """The message as the caller sent it."""
        return self.model_dump(exclude_unset=True)


class ChatRequest(BaseModel):
    """The OpenAI chat-completions request: the fields the router checks, and every other
    documented one (`PASSED_FIELDS`), kept to be forwarded unchanged."""

    model_config = ConfigDict(extra="allow")
    model: str = "auto"
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        # Raises BadRequest itself (pydantic lets it through): one 400 naming the field.
        if isinstance(data, dict):
            check_chat_fields(data)
        return data

    def wanted_tokens(self) -> int | None:
        """The caller's token cap, whichever field it used."""
        return self.max_completion_tokens or self.max_tokens

    def unsupported(self) -> list[str]:
        """The fields sent that OpenAI does not document for chat completions."""
        return sorted(set(self.model_extra or {}) - PASSED_FIELDS)

    def upstream_body(self, model: str, max_tokens: int) -> dict[str, Any]:
        """The body sent to a backend: the messages and every documented field as the caller
        sent them, our model name and token limit. A backend is always asked to stream, with
        its usage last, whatever the caller asked: its answer is judged by its progress."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.upstream() for m in self.messages],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for name in ("temperature", "top_p", "stop", "seed"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        body.update((name, value) for name, value in (self.model_extra or {}).items()
                    if name in PASSED_FIELDS)
        return body


def check_fields(request: ChatRequest) -> None:
    """A 400 naming the first field the router would otherwise have to drop."""
    unsupported = request.unsupported()
    if unsupported:
        raise BadRequest(f"unsupported parameter '{unsupported[0][:64]}': not an OpenAI "
                         "chat-completions field", code="unsupported_parameter")


class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request."""

    model_config = ConfigDict(extra="ignore")
    model: str = "small"
    input: str | list[str]
    # The openai client asks for base64 by default; backends are always asked for floats.
    encoding_format: Literal["float", "base64"] = "float"


class AiChatRequest(BaseModel):
    """The platform's own chat shape: `POST /ai/chat`."""

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage] = Field(min_length=1)
    max_length: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    system_prompt: str | None = None
    model: str = "auto"


class AiGenerateRequest(BaseModel):
    """The platform's own generation shape: `POST /ai/generate`."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1)
    max_length: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    system_prompt: str | None = None
    model: str = "auto"


class AiEmbeddingsRequest(BaseModel):
    """The platform's own embeddings shape: `POST /ai/embeddings`."""

    model_config = ConfigDict(extra="ignore")
    text: str | list[str]


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body or raise a 400 that says what is wrong."""
    if not body.strip():
        raise BadRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError, not only JSONDecodeError: an integer literal longer than Python's
        # int-string limit (4300 digits) raises a plain ValueError from inside the decoder.
        raise BadRequest(f"the request body is not valid JSON: {type(exc).__name__}",
                         code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    try:
        # JSON may escape a lone surrogate ("\ud800"): valid JSON, but not text. It would only
        # fail later, when the backend request is encoded as UTF-8, outside any error mapping.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the request body holds an unpaired surrogate (not valid Unicode)",
                         code="invalid_json") from None
    check_body(data)
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    """Validate `data` against `model`, turning pydantic's errors into one readable 400."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"invalid field '{where}': {first['msg']}",
                         code="invalid_request") from None


def check_messages(messages: list[ChatMessage], settings: Settings) -> None:
    """Enforce the message-count and content-length limits."""
    if len(messages) > settings.max_messages:
        raise BadRequest(f"too many messages: at most {settings.max_messages}",
                         code="too_many_messages")
    for index, message in enumerate(messages):
        if len(message.text()) > settings.max_content_chars:
            raise BadRequest(
                f"message {index} is too long: at most {settings.max_content_chars} characters",
                code="content_too_long")


def clamp_tokens(wanted: int | None, settings: Settings) -> int:
    """The `max_tokens` to send: the caller's, or the default, never above the cap."""
    if wanted is not None and wanted > settings.max_tokens_cap:
        raise BadRequest(f"max_tokens is above the limit of {settings.max_tokens_cap}",
                         code="max_tokens_too_large")
    return wanted or settings.default_max_tokens


def check_inputs(inputs: str | list[str], settings: Settings) -> list[str]:
    """Validate embedding inputs against the same limits as messages."""
    items = [inputs] if isinstance(inputs, str) else inputs
    if not items:
        raise BadRequest("input must not be empty", code="invalid_request")
    if len(items) > settings.max_messages:
        raise BadRequest(f"too many inputs: at most {settings.max_messages}",
                         code="too_many_inputs")
    if any(len(item) > settings.max_content_chars for item in items):
        raise BadRequest(f"an input is too long: at most {settings.max_content_chars} characters",
                         code="content_too_long")
    return items
