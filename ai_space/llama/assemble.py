"""One chat answer as it streams from llama-server: what the metrics need, and the whole
`chat.completion` body for a caller that did not ask for a stream.

The chunks are OpenAI's: text in `delta.content`, tool calls in `delta.tool_calls` (the first
piece of each carries its index, id, type and name; later pieces add to its arguments),
log-probabilities in `logprobs.content`, the end in `finish_reason`, and the token counts in a
last chunk with no choices (`stream_options.include_usage`, which the front always asks for).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


class PrefillCut:
    """Drops a continued message's own text from the front of the answer.

    llama-server continues a trailing assistant message (its prefill-assistant default), but
    its parser prepends that message to the model's output, so the first delta repeats it.
    OpenAI's contract, and the router's failover, want only the new text.
    """

    def __init__(self, prefill: str) -> None:
        self.pending = prefill.rstrip()
        self.space = prefill[len(self.pending):]  # trailing whitespace the template may trim

    def __call__(self, text: str) -> str:
        """The part of this delta that is new."""
        if self.pending:
            if text.startswith(self.pending):
                text, self.pending = text[len(self.pending):], ""
            elif self.pending.startswith(text):
                self.pending = self.pending[len(text):]
                return ""
            else:
                self.pending = self.space = ""  # not a repeat after all: pass it on
                return text
        if self.space and text:
            if text.startswith(self.space):
                text = text[len(self.space):]
            self.space = ""
        return text


@dataclass
class Answer:
    """What one generation has produced so far."""

    started: float = field(default_factory=time.monotonic)
    first: float | None = None  # when the first text or tool call arrived
    cid: str = ""
    model: str = ""
    created: int = 0
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[Any] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: bool = False
    hung_up: bool = False
    cut: PrefillCut | None = None  # a continued message's text, to drop from the answer
    # parallel_tool_calls false: end at the first call, whatever the engine's parser allows.
    one_call: bool = False
    timings: dict[str, Any] = field(default_factory=dict)  # the engine's counts so far

    def one_call_ended(self, event: dict[str, Any]) -> bool:
        """Whether this chunk starts a second tool call (the first is then whole)."""
        return any(int(call.get("index", 0)) > 0
                   for choice in event.get("choices") or ()
                   for call in (choice.get("delta") or {}).get("tool_calls") or ())

    def end_at_first_call(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks that end the answer at its first call: its finish, then the usage the
        engine's running counts give (its own usage chunk never comes: it is stopped)."""
        head: dict[str, Any] = {k: event[k] for k in ("id", "object", "created", "model")
                                if k in event}
        prompt = int(self.timings.get("prompt_n", 0)) + int(self.timings.get("cache_n", 0))
        usage = {"prompt_tokens": prompt,
                 "completion_tokens": int(self.timings.get("predicted_n", 0)),
                 "total_tokens": prompt + int(self.timings.get("predicted_n", 0))}
        return [{**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
                {**head, "choices": [], "usage": usage}]

    def note(self, event: dict[str, Any]) -> None:
        """Take in one chunk."""
        self.cid = self.cid or str(event.get("id", ""))
        self.model = self.model or str(event.get("model", ""))
        self.created = self.created or int(event.get("created", 0))
        usage = event.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens", 0))
            self.completion_tokens = int(usage.get("completion_tokens", 0))
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls"):
                self.first = self.first or time.monotonic()
            if delta.get("content"):
                self.text.append(delta["content"])
            if delta.get("reasoning_content"):
                self.reasoning.append(delta["reasoning_content"])
            for call in delta.get("tool_calls") or ():
                self._tool_call(call)
            entries = (choice.get("logprobs") or {}).get("content")
            if entries is not None:
                self.logprobs = [*(self.logprobs or []), *entries]
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    def _tool_call(self, piece: dict[str, Any]) -> None:
        index = int(piece.get("index", len(self.tool_calls)))
        call = self.tool_calls.setdefault(index, {"id": "", "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
        if piece.get("id"):
            call["id"] = piece["id"]
        function = piece.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    def outcome(self) -> str:
        """How it ended, for the log and the metrics: the finish reason, error or cancelled."""
        if self.failed:
            return "error"
        if self.finish_reason is None or self.hung_up:
            return "cancelled"
        return self.finish_reason

    def completion(self) -> dict[str, Any]:
        """The `chat.completion` body."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text)}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            message["content"] = message["content"] or None
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        logprobs = {"content": self.logprobs} if self.logprobs is not None else None
        return {"id": self.cid, "object": "chat.completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": self.finish_reason, "logprobs": logprobs}],
                "usage": {"prompt_tokens": self.prompt_tokens,
                          "completion_tokens": self.completion_tokens,
                          "total_tokens": self.prompt_tokens + self.completion_tokens}}
