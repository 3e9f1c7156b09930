"""`auto` routing: a rule-based choice between the worker and the Space, in microseconds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from router._config import Settings
from router._errors import BadRequest
from router._schema import ChatMessage

Target = Literal["worker", "space"]
_ALIAS_TARGET: dict[str, Target] = {"small": "worker", "llm": "space"}


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes first, and why (shown in `X-Chat-Route`)."""

    target: Target
    reason: str


class Policy:
    """The routing rules, compiled once per container from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        words = sorted(settings.route_task_words, key=len, reverse=True)
        # Word boundaries so that "code" does not match "decoder"; one regex, one scan.
        self._task_re = re.compile(
            r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE
        ) if words else None
        self._names: dict[str, Target] = {
            settings.worker_model: "worker",
            settings.space_model: "space",
            **{name: _ALIAS_TARGET[target] for name, target in settings.aliases().items()},
            **_ALIAS_TARGET,
        }

    def known_models(self) -> dict[str, Target]:
        """Every model name a caller may send, except `auto`, with its target."""
        return dict(self._names)

    def decide(self, model: str, messages: list[ChatMessage], max_tokens: int | None) -> Decision:
        """Pick the first backend for a chat request."""
        if model != "auto":
            target = self._names.get(model)
            if target is None:
                raise BadRequest(f"unknown model '{model[:64]}'; see GET /v1/models",
                                 code="model_not_found")
            return Decision(target, f"model:{model}" if model not in _ALIAS_TARGET else model)
        return self._auto(messages, max_tokens)

    def _auto(self, messages: list[ChatMessage], max_tokens: int | None) -> Decision:
        rules = self.settings
        if max_tokens is not None and max_tokens >= rules.route_max_tokens:
            return Decision("space", "max_tokens")
        turns = sum(1 for m in messages if m.role in ("user", "assistant"))
        if turns >= rules.route_turns:
            return Decision("space", "multi_turn")
        total = sum(len(m.text()) for m in messages)
        if total >= rules.route_long_chars:
            return Decision("space", "long_input")
        last_user = next((m.text() for m in reversed(messages) if m.role == "user"), "")
        if self._task_re is not None:
            match = self._task_re.search(last_user)
            if match:
                return Decision("space", f"task:{match.group(1).lower()}")
        return Decision(_ALIAS_TARGET[rules.route_default], "default")
