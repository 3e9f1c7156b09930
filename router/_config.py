"""Settings: read once from the environment at the edge, validated, then passed down.

Every field maps to the environment variable of the same name in upper case
(`worker_url` <- `WORKER_URL`). The library itself never reads `os.environ`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from ipaddress import ip_network
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from router._deployments import Deployment, build, check_url, parse, token_variables
from router._errors import ConfigError

DEFAULT_TASK_WORDS = (
    "write", "draft", "summarise", "summarize", "summary", "translate", "explain", "code",
    "proposal", "essay", "rewrite", "cover letter", "function", "script",
)

# At most the platform's longest function timeout (15 min): a larger one is a typo, and past
# what a socket timeout takes it would raise OverflowError inside the HTTP client.
MAX_MS = 900_000
PositiveMs = Annotated[int, Field(ge=1, le=MAX_MS)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# `owner/name`, as the Hub spells a repo id.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_unset(value: object) -> bool:
    """Whether an environment value means "not set": empty, or `none` in any case.

    DigitalOcean's deployer treats an empty `${VAR}` as unresolved and fails the deploy, so an
    optional variable that should stay unset is written `none` in .env (see .env.example).
    """
    return isinstance(value, str) and value.strip().lower() in ("", "none")


_SPEC_FIELDS = frozenset({"small_deployments", "llm_deployments"})


def _spec_message(error: Any) -> str:
    """A deployments parser's own message (it names the variable and an entry, never a value),
    or "" for any other error, whose variable is named instead."""
    name = str(error["loc"][0])
    message = str(error.get("ctx", {}).get("error", ""))
    return message if name in _SPEC_FIELDS and message.startswith(f"{name.upper()}:") else ""


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
    # More deployments per tier (router/_deployments.py): `name key=value ...; name ...`.
    small_deployments: str = ""
    llm_deployments: str = ""
    # The Inference Endpoints API (huggingface_hub hard-codes it; tests point it at a fake).
    hf_endpoints_api: str = "https://api.endpoints.huggingface.cloud/v2"

    # Deadlines, in milliseconds.
    router_deadline_ms: PositiveMs = 25_000
    # The service's true streams (no platform cut): long enough for a long answer on a slow GPU.
    stream_deadline_ms: PositiveMs = 300_000
    min_deadline_ms: PositiveMs = 1_000
    deadline_margin_ms: int = Field(default=500, ge=0, le=MAX_MS)
    fallback_reserve_ms: int = Field(default=8_000, ge=0, le=MAX_MS)
    connect_timeout_ms: PositiveMs = 2_000
    wake_grace_ms: int = Field(default=300, ge=0, le=MAX_MS)
    # Streams (router/_stream_read.py): no content, or no chunk, for this long means fail over.
    first_token_timeout_ms: PositiveMs = 8_000
    stream_stall_timeout_ms: PositiveMs = 8_000

    # Retries and circuit breaker.
    retry_attempts: int = Field(default=3, ge=1, le=10)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=86_400)
    space_probe_s: float = Field(default=5.0, gt=0, le=86_400)
    wake_cooldown_s: float = Field(default=120.0, ge=0, le=86_400)
    # After a restart (resume), how often the service asks the Hub whether the deployment
    # runs again: `router_space_wake_seconds` is timed to that answer.
    wake_poll_ms: PositiveMs = 5_000

    # Who may call.
    cors_origins: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    client_token_secret: str = ""
    client_token_max_ttl_s: int = Field(default=3_600, ge=1)
    client_token_leeway_s: int = Field(default=30, ge=0, le=300)
    # Proxies (addresses or networks) whose X-Forwarded-For the service believes; the function
    # always takes the right-most entry, which DigitalOcean's edge writes.
    trusted_proxies: tuple[str, ...] = ()

    # Per-subject quotas (router/_quota.py); 0 = no limit. REDIS_URL shares the counters.
    rate_limit_per_minute: int = Field(default=0, ge=0)
    llm_rate_limit_per_minute: int = Field(default=0, ge=0)
    redis_url: str = ""
    redis_timeout_ms: int = Field(default=40, ge=1, le=1_000)

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

    log_level: LogLevel = "INFO"
    # Traces (router/_tracing.py), OpenTelemetry's variables: exported over OTLP/HTTP (JSON)
    # to `<endpoint>/v1/traces` only when the endpoint is set. Headers: `k=v,k=v` (secret).
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_headers: str = ""
    otel_service_name: str = "chat-router"

    # Keep-warm window, off-hours rule and the warmup function (router/_schedule.py, warmup.py).
    warm_schedule: str = ""
    off_hours: Literal["fallback", "wake"] = "fallback"
    ask_url: str = ""
    space_sleep_time_s: int | None = Field(default=None, ge=-1)
    space_hardware: str = "t4-small"
    warmup_timeout_ms: PositiveMs = 3_000

    # The values of the variables the deployments name for their tokens (`token=SPACE_B_TOKEN`),
    # read from the environment by `from_env` with everything else.
    _named_secrets: dict[str, str] = PrivateAttr(default_factory=dict)

    _csv_fields = field_validator(
        "cors_origins", "api_keys", "route_task_words", "model_aliases", "trusted_proxies",
        mode="before"
    )(_csv)

    @model_validator(mode="before")
    @classmethod
    def _none_is_unset(cls, data: Any) -> Any:
        # `none` (any case) leaves an optional setting at its default; see is_unset.
        if not isinstance(data, Mapping):
            return data
        return {key: value for key, value in data.items()
                if not (is_unset(value) and key in cls.model_fields
                        and not cls.model_fields[key].is_required())}

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # An undecodable byte in the environment arrives as a lone surrogate: it would pass as
        # text and crash every request where the value is encoded (a model name in a body).
        for item in (value,) if isinstance(value, str) else \
                (value if isinstance(value, list | tuple) else ()):
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("must be valid UTF-8 text") from None
        return value

    @field_validator("worker_url", "space_url", "hf_endpoint", "ask_url",
                     "otel_exporter_otlp_endpoint", "hf_endpoints_api")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_url(value) if value else value

    @field_validator("small_deployments", "llm_deployments")
    @classmethod
    def _deployment_specs(cls, value: str, info: ValidationInfo) -> str:
        # The shape alone here; the tokens it names are resolved in `deployments`.
        parse(value, str(info.field_name).upper())
        return value

    @field_validator("client_token_secret")
    @classmethod
    def _long_secret(cls, value: str) -> str:
        # RFC 7518 §3.2: an HS256 key at least as long as the hash (256 bits).
        if value and len(value.encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ip_network(item, strict=False)
            except ValueError:
                raise ValueError("entries must be IP addresses or networks (CIDR)") from None
        return value

    @field_validator("worker_token", "space_token", "hf_token", "api_keys")
    @classmethod
    def _header_safe(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        # Tokens travel in HTTP headers: visible ASCII only (anything else fails every call).
        for item in (value,) if isinstance(value, str) else value:
            if not all("!" <= char <= "~" for char in item):
                raise ValueError("must be visible ASCII, without spaces")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("space_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        if value and not _REPO_ID.fullmatch(value):
            raise ValueError("must be owner/name")
        return value

    @field_validator("warm_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        # Imported here, not with this module: the entry's import need not parse schedules.
        from router._schedule import Schedule

        try:
            Schedule.parse(value)
        except ConfigError:
            raise ValueError("not a keep-warm schedule") from None
        return value

    @field_validator("model_aliases")
    @classmethod
    def _aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            name, _, target = item.partition("=")
            if not name.strip() or target.strip() not in ("small", "llm"):
                raise ValueError("entries must look like name=small or name=llm")
        return value

    @field_validator("route_task_words")
    @classmethod
    def _lower_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(word.lower() for word in value)

    @cached_property
    def deployments(self) -> tuple[Deployment, ...]:
        """Every deployment, small tier first (router/_deployments.py); ConfigError naming the
        bad entry. `from_env` builds them once, so a bad one stops the start, not a request."""
        shorthand = [Deployment("worker", "small", "worker", self.worker_url,
                                self.worker_token, model=self.worker_model)]
        if self.space_url:
            shorthand.append(Deployment("space", "llm", "space", self.space_url,
                                        self.space_token, model=self.space_model,
                                        hub_id=self.space_id, hub_token=self.hf_token))
        try:
            return build(shorthand, {"small": self.small_deployments,
                                     "llm": self.llm_deployments},
                         {"small": self.worker_model, "llm": self.space_model},
                         lambda name: self._named_secrets.get(name, ""))
        except ValueError as exc:
            raise ConfigError(f"invalid settings: {exc}") from None

    @property
    def has_space(self) -> bool:
        """Whether the LLM tier has a deployment at all (else `llm` goes to the small tier)."""
        return any(d.tier == "llm" for d in self.deployments)

    @property
    def can_wake(self) -> bool:
        """Whether the router holds what waking a Space or an endpoint through the Hub needs."""
        return any(d.can_wake for d in self.deployments)

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
                  self.space_url, self.client_token_secret, self.redis_url,
                  urlsplit(self.redis_url).password or "", *self.api_keys,
                  self.otel_exporter_otlp_headers, *self.otel_header_values(),
                  *self._named_secrets.values(),
                  *(value for d in self.deployments for value in (d.url, d.token, d.hub_token)))
        return tuple(dict.fromkeys(v for v in values if len(v) >= 4))

    def otel_header_values(self) -> tuple[str, ...]:
        """The values of OTEL_EXPORTER_OTLP_HEADERS (`k=v,k=v`): a collector's credentials."""
        return tuple(value.strip() for _, _, value in (
            item.partition("=") for item in self.otel_exporter_otlp_headers.split(",")) if value)

    def private_hosts(self) -> tuple[str, ...]:
        """The backends' and Redis' host names: kept out of answers even without a scheme."""
        urls = (self.worker_url, self.space_url, self.redis_url,
                *(d.url for d in self.deployments))
        hosts = (urlsplit(url).hostname or "" for url in urls)
        return tuple(dict.fromkeys(host for host in hosts if len(host) >= 4))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; empty and `none` values count as unset."""
        fields = cls.model_fields
        raw = {name: env[name.upper()] for name in fields if env.get(name.upper(), "") != ""}
        try:
            settings = cls.model_validate(raw)
        except ValidationError as exc:
            # Name the variables only: their values may be secrets. The deployments' own
            # messages name an entry and a key, never a value, and are kept.
            errors = [err for err in exc.errors() if err["loc"]]
            detail = [err for err in errors if _spec_message(err)]
            names = sorted({str(err["loc"][0]).upper() for err in errors} - {
                str(err["loc"][0]).upper() for err in detail})
            parts = ([f"invalid or missing settings: {', '.join(names)}"] if names else []) \
                + [f"invalid settings: {_spec_message(err)}" for err in detail]
            raise ConfigError("; ".join(parts)) from None
        named = token_variables(settings.small_deployments, settings.llm_deployments)
        settings._named_secrets = {name: env[name] for name in named
                                   if not is_unset(env.get(name, ""))}
        _ = settings.deployments  # every entry checked now, at the edge
        return settings
