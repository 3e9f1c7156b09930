"""Settings: read once from the environment at the edge, validated, then passed down.

Every field maps to the environment variable of the same name in upper case
(`worker_url` <- `WORKER_URL`). The library itself never reads `os.environ`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.errors import ConfigError

DEFAULT_TASK_WORDS = (
    "write", "draft", "summarise", "summarize", "summary", "translate", "explain", "code",
    "proposal", "essay", "rewrite", "cover letter", "function", "script",
)

PositiveMs = Annotated[int, Field(ge=1)]


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class Settings(BaseModel):
    """Everything the router needs, validated once per container."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # Backends. The worker is required; the Space is optional (then `llm` goes to the worker).
    worker_url: str
    worker_token: str = ""
    worker_model: str = "small"
    space_url: str = ""
    space_token: str = ""
    space_model: str = "llm"
    space_id: str = ""
    hf_token: str = ""
    hf_endpoint: str = "https://huggingface.co"

    # Deadlines, in milliseconds.
    router_deadline_ms: PositiveMs = 25_000
    min_deadline_ms: PositiveMs = 1_000
    deadline_margin_ms: int = Field(default=500, ge=0)
    fallback_reserve_ms: int = Field(default=8_000, ge=0)
    connect_timeout_ms: PositiveMs = 2_000
    wake_grace_ms: int = Field(default=300, ge=0)
    # Streams (router/stream_read.py): no content, or no chunk, for this long means fail over.
    first_token_timeout_ms: PositiveMs = 8_000
    stream_stall_timeout_ms: PositiveMs = 8_000

    # Retries and circuit breaker.
    retry_attempts: int = Field(default=3, ge=1, le=10)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    space_probe_s: float = Field(default=5.0, gt=0)
    wake_cooldown_s: float = Field(default=120.0, ge=0)

    # Who may call.
    cors_origins: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    browser_needs_key: bool = False

    # Limits that protect the backends.
    max_body_bytes: int = Field(default=262_144, ge=1_024, le=1_048_576)
    max_messages: int = Field(default=64, ge=1)
    max_content_chars: int = Field(default=32_000, ge=1)
    max_tokens_cap: int = Field(default=2_048, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)

    # `auto` routing rules.
    route_long_chars: int = Field(default=1_200, ge=1)
    route_turns: int = Field(default=6, ge=1)
    route_max_tokens: int = Field(default=512, ge=1)
    route_task_words: tuple[str, ...] = DEFAULT_TASK_WORDS
    route_default: Literal["small", "llm"] = "small"
    model_aliases: tuple[str, ...] = ()

    log_level: str = "INFO"

    # Keep-warm window, off-hours rule and the warmup function (router/schedule.py, warmup.py).
    warm_schedule: str = ""
    off_hours: Literal["fallback", "wake"] = "fallback"
    ask_url: str = ""
    space_sleep_time_s: int | None = Field(default=None, ge=-1)
    space_hardware: str = "t4-small"
    warmup_timeout_ms: PositiveMs = 3_000

    _csv_fields = field_validator(
        "cors_origins", "api_keys", "route_task_words", "model_aliases", mode="before"
    )(_csv)

    @field_validator("worker_url", "space_url", "hf_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("route_task_words")
    @classmethod
    def _lower_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(word.lower() for word in value)

    @property
    def has_space(self) -> bool:
        """Whether a Space is configured at all."""
        return bool(self.space_url)

    @property
    def can_wake(self) -> bool:
        """Whether the router holds what `restart_space` needs."""
        return bool(self.space_id and self.hf_token)

    def aliases(self) -> dict[str, str]:
        """Extra model names from MODEL_ALIASES (`name=small,other=llm`), mapped to a target."""
        out: dict[str, str] = {}
        for item in self.model_aliases:
            name, _, target = item.partition("=")
            out[name.strip()] = target.strip()
        return out

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in an answer or a log line."""
        values = (self.worker_token, self.space_token, self.hf_token, self.worker_url,
                  self.space_url, *self.api_keys)
        return tuple(v for v in values if len(v) >= 4)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; empty strings count as unset."""
        fields = cls.model_fields
        raw = {name: env[name.upper()] for name in fields if env.get(name.upper(), "") != ""}
        try:
            settings = cls.model_validate(raw)
        except ValidationError as exc:
            # Name the variables only: their values may be secrets.
            names = sorted({str(err["loc"][0]).upper() for err in exc.errors() if err["loc"]})
            raise ConfigError(f"invalid or missing settings: {', '.join(names)}") from None
        for name, target in settings.aliases().items():
            if not name or target not in ("small", "llm"):
                raise ConfigError("MODEL_ALIASES entries must look like name=small or name=llm")
        return settings
