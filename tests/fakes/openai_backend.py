"""A scriptable OpenAI-style backend (and Hugging Face edge) served over loopback.

It answers like our model server when healthy, and like the failures DESIGN §2 records when
told to: the HF sleeping page (200 + HTML), 502/503/504, hangs, resets, bad JSON, and so on.

Modes: ok, sleeping, status:N (with `retry_after`), hang, slow (`delay_s` before the first
byte), bad_json, no_choices, wrong_ctype, reset, sse_truncated (200 text/event-stream cut off
before `[DONE]`), empty_data (an embeddings answer with no vectors), huge (a well-formed
completion of `huge_bytes`), flap (cycles awake/asleep/starting every `flap_period_s`),
drip (200 JSON headers, then one byte every `drip_every_s` for up to `delay_s`; `dropped_at`
records when the client hung up).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.asgi import read_request

SLEEPING_PAGE = (b"<!DOCTYPE html><html><head><title>Sleeping</title></head><body>"
                 b"<h1>This Space is sleeping due to inactivity.</h1>"
                 b"<button>Restart this Space</button></body></html>")


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class FakeBackend:
    """An ASGI app; `mode` picks how it answers, `seen` records every request."""

    name: str
    token: str = ""
    url: str = ""
    mode: str = "ok"
    retry_after: str | None = None
    delay_s: float = 0.0
    huge_bytes: int = 1_100_000
    flap_period_s: float = 0.05
    drip_every_s: float = 0.05
    error_body: dict[str, Any] | None = None  # what status:N answers (default: a bare error)
    dropped_at: list[float] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def generation_requests(self) -> int:
        """How many chat-completion requests reached this backend."""
        with self._lock:
            return sum(1 for s in self.seen if s.path == "/v1/chat/completions")

    def release(self) -> None:
        """Let every hanging request finish (called at teardown)."""
        self.released.set()

    async def _hold(self, limit_s: float) -> None:
        # A hang that ends when the test releases it, or after limit_s: the fake's own
        # behaviour, not a test's synchronisation.
        end = time.monotonic() + limit_s
        while not self.released.is_set() and time.monotonic() < end:
            await asyncio.sleep(0.01)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.release()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, headers = await read_request(scope, receive)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        with self._lock:
            self.seen.append(Seen(scope["method"], scope["path"], headers, parsed))
        if self.mode == "drip":
            await self._drip(receive, send)
            return
        await self._answer(scope["path"], headers, parsed, send)

    async def _drip(self, receive: Any, send: Any) -> None:
        # A backend that keeps the connection busy with one byte at a time, each well inside
        # any per-read timeout, and notes when the client gives up on it.
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            with self._lock:
                self.dropped_at.append(time.monotonic())

        watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        end = time.monotonic() + self.delay_s
        while not watcher.done() and not self.released.is_set() and time.monotonic() < end:
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await asyncio.sleep(self.drip_every_s)
        if not watcher.done():
            watcher.cancel()
            await send({"type": "http.response.body", "body": b"{}"})

    async def _send(self, send: Any, status: int, body: bytes, ctype: str = "application/json",
                    extra: dict[str, str] | None = None) -> None:
        head = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        head += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    def _flap_mode(self) -> str:
        # A Space that goes to sleep and wakes again on its own clock: awake, sleeping page,
        # then 503 while starting, each for `flap_period_s`.
        phase = int(time.monotonic() / self.flap_period_s) % 3
        return ("ok", "sleeping", "status:503")[phase]

    async def _answer(self, path: str, headers: dict[str, str], body: dict[str, Any] | None,
                      send: Any) -> None:
        mode = self._flap_mode() if self.mode == "flap" else self.mode
        extra = {"retry-after": self.retry_after} if self.retry_after else {}
        if path == "/health" and mode == "ok":
            await self._send(send, 200, b'{"status":"ready"}')
            return
        if mode == "sleeping":
            await self._send(send, 200, SLEEPING_PAGE, "text/html; charset=utf-8")
            return
        if mode.startswith("status:"):
            status = int(mode.split(":")[1])
            error = self.error_body or {"error": {"message": "fake"}}
            await self._send(send, status, json.dumps(error).encode(), extra=extra)
            return
        if mode == "hang":
            await self._hold(60)
            return
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            await self._send(send, 401, b'{"error":{"message":"bad token"}}')
            return
        if mode == "slow":
            await self._hold(self.delay_s)
        if mode == "bad_json":
            await self._send(send, 200, b'{"choices": [')
            return
        if mode == "no_choices":
            await self._send(send, 200, b'{"object": "chat.completion"}')
            return
        if mode == "wrong_ctype":
            await self._send(send, 200, b"hello", "text/plain")
            return
        if mode == "reset":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"choices"', "more_body": True})
            raise ConnectionResetError("fake reset mid-body")
        if mode == "sse_truncated":
            # A backend that ignores `stream: false` and whose stream ends before `[DONE]`.
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            chunk = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
                     "model": self.name, "choices": [{"index": 0, "delta": {"content": "par"},
                                                      "finish_reason": None}]}
            await send({"type": "http.response.body", "more_body": True,
                        "body": f"data: {json.dumps(chunk)}\n\n".encode()})
            await send({"type": "http.response.body", "body": b'data: {"id": "chatc'})
            return
        if mode == "empty_data":
            await self._send(send, 200, b'{"object": "list", "data": [], "model": "x"}')
            return
        if mode == "huge":
            answer = self._ok(path, body or {})
            if "choices" in answer:
                answer["choices"][0]["message"]["content"] = "x" * self.huge_bytes
            await self._send(send, 200, json.dumps(answer).encode())
            return
        await self._send(send, 200, json.dumps(self._ok(path, body or {})).encode())

    def _ok(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/v1/embeddings":
            inputs = body.get("input", [])
            inputs = [inputs] if isinstance(inputs, str) else inputs
            return {"object": "list", "model": body.get("model", self.name),
                    "data": [{"object": "embedding", "index": i, "embedding": _vector(text)}
                             for i, text in enumerate(inputs)],
                    "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}
        if path == "/v1/models":
            return {"object": "list", "data": [{"id": self.name, "object": "model"}]}
        messages = body.get("messages") or [{"content": ""}]
        last = str(messages[-1].get("content", ""))
        return {
            "id": f"chatcmpl-{self.name}", "object": "chat.completion", "created": 1,
            "model": body.get("model", self.name),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"{self.name}: {last}"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }


def _vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:dims]]
