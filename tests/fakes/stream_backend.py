"""A streaming OpenAI-style backend over loopback that breaks its streams on purpose.

It behaves like a deterministic (greedy) model whose answer to every request is `text`, sent
one word (with its leading space) per chunk, `every_s` apart, at most `max_tokens` chunks
(then `finish_reason: length`). A request whose last message is the assistant's (a prefill) is
continued the way vLLM, TGI and ai_space continue one: only a prefill that is the start of its
own answer can be continued, with the rest of that answer; any other prefill gets a 400 (it
knows no other text), and `refuse_prefill` refuses every prefill, as several hosted models do.
`reasoning` words go out as `reasoning_content` deltas before the answer, like a thinking model.
With `tool_call` (a function name) the answer is a call of that function, `text` its arguments,
sent as tool-call deltas, ending with `finish_reason: tool_calls`. A request with `logprobs: true`
gets each word's log-probability (`logprob_of`) in OpenAI's shape, streamed or not.

Modes: ok, late_first (the first chunk after `delay_s`), stall (silent after `after` tokens),
cut (the body ends after `after` tokens), malformed (a broken chunk after `after` tokens),
no_done (the finish chunk, then the connection stays open, no `[DONE]`), error_event (an
`{"error": ...}` event after `after` tokens), no_headers (never answers at all), json (ignores
`stream: true` and answers one JSON completion), status:N (its error's `code` is `error_code`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.asgi import read_request


@dataclass
class StreamBackend:
    """An ASGI app; `mode` picks how each stream breaks, `bodies` records what it was asked."""

    name: str
    mode: str = "ok"
    text: str = " ".join(f"t{i}" for i in range(10))
    reasoning: str = ""
    tool_call: str = ""
    after: int = 3
    every_s: float = 0.0
    delay_s: float = 0.0
    refuse_prefill: bool = False
    error_code: str = ""  # the `code` of the error that status:N answers
    force_stream: bool = False  # stream even when asked for `stream: false`
    stamp: bool = False  # put the wall-clock send time in each chunk (`x_sent`), for the bench
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    dropped: threading.Event = field(default_factory=threading.Event)  # a client hung up
    released: threading.Event = field(default_factory=threading.Event)
    requested: threading.Event = field(default_factory=threading.Event)  # a request came in

    def release(self) -> None:
        """Let every held stream end (teardown)."""
        self.released.set()

    async def _hold(self, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while not self.released.is_set() and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.01)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                if kind == "shutdown":
                    self.release()
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        raw, _ = await read_request(scope, receive)
        body = json.loads(raw or b"{}")
        self.bodies.append(body)
        self.requested.set()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.dropped.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._answer(body, send)
        finally:
            watcher.cancel()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None,
               logprobs: list[dict[str, Any]] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 1,
            "model": self.name, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}]}
        if logprobs is not None:
            data["choices"][0]["logprobs"] = {"content": logprobs, "refusal": None}
        if self.stamp:
            data["x_sent"] = time.time()
        return f"data: {json.dumps(data)}\n\n".encode()

    async def _json(self, send: Any, status: int, data: dict[str, Any]) -> None:
        raw = json.dumps(data).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": raw})

    async def _answer(self, body: dict[str, Any], send: Any) -> None:
        words = re.findall(r"\s*\S+", self.text)
        messages = body.get("messages") or []
        start = 0
        if messages and messages[-1].get("role") == "assistant":
            prefill = str(messages[-1].get("content") or "")
            if self.refuse_prefill or not self.text.startswith(prefill):
                await self._json(send, 400, {"error": {"message": "cannot continue this prefill",
                                                       "code": "invalid_request"}})
                return
            rest = re.findall(r"\s*\S+", self.text[len(prefill):])
            start = len(words) - len(rest)
            words = words[:start] + rest
        budget = int(body.get("max_completion_tokens") or body.get("max_tokens") or 10_000)
        finish = "stop" if len(words) - start <= budget else "length"
        words = words[:start + budget]
        if self.mode.startswith("status:"):
            error = {"message": "x", **({"code": self.error_code} if self.error_code else {})}
            await self._json(send, int(self.mode.split(":")[1]), {"error": error})
            return
        if self.mode == "no_headers":
            await self._hold(60)
            return
        with_logprobs = bool(body.get("logprobs"))
        if self.mode == "json" or not (body.get("stream") or self.force_stream):
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "message": {
                "role": "assistant", "content": "".join(words[start:])}}
            if with_logprobs:
                choice["logprobs"] = {"content": [logprob_of(word) for word in words[start:]],
                                      "refusal": None}
            await self._json(send, 200, {
                "id": f"chatcmpl-{self.name}", "object": "chat.completion", "created": 1,
                "model": self.name, "choices": [choice]})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})

        async def out(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        if self.mode == "late_first":
            await self._hold(self.delay_s)
        await out(self._chunk({"role": "assistant", "content": ""}))
        if self.tool_call:
            finish = "tool_calls"
            await out(self._chunk({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                                                   "function": {"name": self.tool_call,
                                                                "arguments": ""}}]}))
        for word in re.findall(r"\s*\S+", self.reasoning):
            await out(self._chunk({"reasoning_content": word}))
            if self.every_s:
                await self._hold(self.every_s)
        for index in range(start, len(words)):
            if index - start == self.after and self.mode in ("stall", "cut", "malformed",
                                                              "error_event"):
                if self.mode == "stall":
                    await self._hold(60)
                elif self.mode == "malformed":
                    await out(b'data: {"choices": [{"delta": \n\n')
                    await self._hold(60)
                elif self.mode == "error_event":
                    await out(b'data: {"error": {"message": "overloaded"}}\n\n')
                await out(b"", more=False)
                return
            if self.tool_call:
                await out(self._chunk({"tool_calls": [{"index": 0, "function": {
                    "arguments": words[index]}}]}))
            else:
                await out(self._chunk({"content": words[index]}, None, [
                    logprob_of(words[index])] if with_logprobs else None))
            if self.every_s:
                await self._hold(self.every_s)
        await out(self._chunk({}, finish))
        if body.get("stream_options", {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": len(words) - start,
                     "total_tokens": 5 + len(words) - start}
            tail = {"id": f"chatcmpl-{self.name}", "choices": [], "usage": usage}
            await out(f"data: {json.dumps(tail)}\n\n".encode())
        if self.mode == "no_done":
            await self._hold(60)
        else:
            await out(b"data: [DONE]\n\n")
        await out(b"", more=False)


def logprob_of(word: str) -> dict[str, Any]:
    """A word's log-probability entry, as OpenAI's `logprobs.content` holds it (a made-up but
    fixed value per word, so that a test can tell each word's entry)."""
    return {"token": word, "logprob": -len(word) / 10, "bytes": list(word.encode()),
            "top_logprobs": []}
