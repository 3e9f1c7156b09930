"""A streaming OpenAI-style backend over loopback that breaks its streams on purpose.

Every answer is the same `tokens` words ("t0 t1 ... t9"), one chunk each, `every_s` apart, so a
continuation from another backend can be checked word for word. A request whose last message is
the assistant's (a prefill) continues after the words it already holds, unless `refuse_prefill`.

Modes: ok, late_first (the first chunk after `delay_s`), stall (silent after `after` tokens),
cut (the body ends after `after` tokens), malformed (a broken chunk after `after` tokens),
no_done (the finish chunk, then the connection stays open, no `[DONE]`), error_event (an
`{"error": ...}` event after `after` tokens), no_headers (never answers at all), json (ignores
`stream: true` and answers one JSON completion), status:N.
"""

from __future__ import annotations

import asyncio
import json
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
    tokens: int = 10
    after: int = 3
    every_s: float = 0.0
    delay_s: float = 0.0
    refuse_prefill: bool = False
    force_stream: bool = False  # stream even when asked for `stream: false`
    stamp: bool = False  # put the wall-clock send time in each chunk (`x_sent`), for the bench
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    dropped: threading.Event = field(default_factory=threading.Event)  # a client hung up
    released: threading.Event = field(default_factory=threading.Event)

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

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.dropped.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._answer(body, send)
        finally:
            watcher.cancel()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 1,
            "model": self.name, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}]}
        if self.stamp:
            data["x_sent"] = time.time()
        return f"data: {json.dumps(data)}\n\n".encode()

    async def _json(self, send: Any, status: int, data: dict[str, Any]) -> None:
        raw = json.dumps(data).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": raw})

    async def _answer(self, body: dict[str, Any], send: Any) -> None:
        words = [f"t{i}" for i in range(self.tokens)]
        messages = body.get("messages") or []
        start = 0
        if messages and messages[-1].get("role") == "assistant":
            if self.refuse_prefill:
                await self._json(send, 400, {"error": {"message": "no prefill",
                                                       "code": "invalid_request"}})
                return
            start = len(messages[-1]["content"].split())
        if self.mode.startswith("status:"):
            await self._json(send, int(self.mode.split(":")[1]), {"error": {"message": "x"}})
            return
        if self.mode == "no_headers":
            await self._hold(60)
            return
        if self.mode == "json" or not (body.get("stream") or self.force_stream):
            await self._json(send, 200, {
                "id": f"chatcmpl-{self.name}", "object": "chat.completion", "created": 1,
                "model": self.name, "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": " ".join(words)}}]})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})

        async def out(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        if self.mode == "late_first":
            await self._hold(self.delay_s)
        await out(self._chunk({"role": "assistant", "content": ""}))
        for index in range(start, self.tokens):
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
            text = words[index] if index == 0 else " " + words[index]
            await out(self._chunk({"content": text}))
            if self.every_s:
                await asyncio.sleep(self.every_s)
        await out(self._chunk({}, "stop"))
        if self.mode == "no_done":
            await self._hold(60)
        else:
            await out(b"data: [DONE]\n\n")
        await out(b"", more=False)
