"""Server settings: read from the environment once, at startup, and passed down."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ai_space.models.packaged import packaged_name

# Environment variable -> field name. Only these are read; everything else is ignored.
_ENV_FIELDS = {
    "API_TOKEN": "api_token",
    "ALLOW_NO_AUTH": "allow_no_auth",
    "MODEL_ID": "model_id",
    "MODEL_FILE": "model_file",
    "EMBEDDING_MODEL_ID": "embedding_model_id",
    "SERVED_MODEL_NAME": "served_model_name",
    "DEVICE": "device",
    "DTYPE": "dtype",
    "ENGINE": "engine",
    "N_THREADS": "n_threads",
    "N_CTX": "n_ctx",
    "KV_TYPE": "kv_type",
    "WEIGHTS": "weights",
    "REPACK": "repack",
    "MAX_CONCURRENCY": "max_concurrency",
    "MAX_QUEUE": "max_queue",
    "MAX_TOKENS": "max_tokens",
    "MAX_INPUT_TOKENS": "max_input_tokens",
    "MAX_BODY_BYTES": "max_body_bytes",
    "MAX_EMBEDDING_INPUTS": "max_embedding_inputs",
    "HOST": "host",
    "PORT": "port",
    "LOG_LEVEL": "log_level",
}

# Values that switch the embedding model off (the GPU Space leaves embeddings to the worker).
_DISABLED = {"", "none", "off", "false", "0"}


class ConfigError(ValueError):
    """The environment does not describe a server that may start."""


class Settings(BaseModel):
    """Everything the server needs to know, validated once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_token: SecretStr | None = None
    allow_no_auth: bool = False
    model_id: str = "pkg:smollm2"
    model_file: str | None = None
    embedding_model_id: str | None = "pkg:minilm"
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # auto: llama.cpp for a GGUF model on the CPU, transformers otherwise (see engine.py).
    engine: Literal["auto", "transformers", "llama.cpp"] = "auto"
    # Inference threads; None means the container's CPU quota (cpus.default_threads).
    n_threads: int | None = Field(default=None, ge=1, le=1024)
    # llama.cpp's KV cache, in tokens, shared by all running requests. Every request reserves
    # its prompt plus max_tokens before it starts. q8_0 halves f16's size (SmolLM2-135M:
    # 12 KB a token instead of 23 KB, so 8192 tokens take 96 MiB).
    n_ctx: int = Field(default=8192, ge=256, le=1_048_576)
    kv_type: Literal["q8_0", "f16"] = "q8_0"
    # llama.cpp: the chat weights' format. auto: the format bench/engines.py measured fastest
    # at the quality bar for the packaged model, the file as shipped for any other; file: as
    # shipped; a type: re-quantised once into GGUF_CACHE (ai_space/llama/weights.py).
    weights: Literal["auto", "file", "q8_0", "q4_0", "q4_1", "iq4_nl"] = "auto"
    # llama.cpp: let its CPU backend repack weights into interleaved blocks at load time.
    repack: bool = True
    max_concurrency: int = Field(default=4, ge=1, le=256)
    max_queue: int = Field(default=16, ge=0, le=10_000)
    max_tokens: int = Field(default=512, ge=1)
    max_input_tokens: int = Field(default=4096, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_embedding_inputs: int = Field(default=256, ge=1)
    host: str = "0.0.0.0"
    port: int = Field(default=7860, ge=1, le=65535)
    # uvicorn's names for the levels it takes (it raises at start-up on anything else).
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fail_closed(self) -> Settings:
        # An empty token would make every request "authorised"; treat it as no token at all.
        if (self.api_token is None or not self.api_token.get_secret_value()) and \
                not self.allow_no_auth:
            raise ValueError("API_TOKEN is not set; set it, or ALLOW_NO_AUTH=1 to run open")
        if self.engine == "llama.cpp" and self.n_ctx < self.max_input_tokens + 1:
            raise ValueError(f"N_CTX ({self.n_ctx}) must exceed MAX_INPUT_TOKENS "
                             f"({self.max_input_tokens}): the longest prompt must fit")
        return self

    @property
    def auth_required(self) -> bool:
        """Whether requests must carry the bearer token."""
        return self.api_token is not None and bool(self.api_token.get_secret_value())

    @property
    def model_name(self) -> str:
        """The chat model's public name, as /v1/models and answers report it."""
        return self.served_model_name or _derive_name(self.model_id, self.model_file)

    @property
    def embedding_model_name(self) -> str | None:
        """The embedding model's public name, or None when embeddings are off."""
        if self.embedding_model_id is None:
            return None
        return _derive_name(self.embedding_model_id, None)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; raise ConfigError when it is unusable."""
        values: dict[str, Any] = {}
        for key, field in _ENV_FIELDS.items():
            raw = env.get(key)
            if raw is None:
                continue
            raw = raw.strip()
            if field == "embedding_model_id":
                values[field] = None if raw.lower() in _DISABLED else raw
            elif field == "allow_no_auth":
                values[field] = raw.lower() in {"1", "true", "yes", "on"}
            elif raw:
                values[field] = raw
        try:
            return cls(**values)
        except ValidationError as exc:
            # Name the variable, never echo the input: it may hold the token.
            names = {field: key for key, field in _ENV_FIELDS.items()}
            problems = "; ".join(
                f"{names.get(str(e['loc'][0]), str(e['loc'][0])) if e['loc'] else 'settings'}: "
                f"{e['msg']}" for e in exc.errors(include_input=False))
            raise ConfigError(problems) from None


def _derive_name(model_id: str, model_file: str | None) -> str:
    named = packaged_name(model_id)
    if named is not None:
        return named
    path = PurePath(model_id)
    if path.is_absolute() or model_id.startswith("."):
        # A local folder: its name, or the GGUF's stem when one file inside is used.
        return PurePath(model_file).stem if model_file else path.name
    return model_id
