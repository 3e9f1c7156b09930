"""Shared helpers for the tests of the llama.cpp front on the real llama-server."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from ai_space import Settings
from ai_space.llama.process import EngineProcess
from ai_space.llama.variants import EngineMissing, engine_binary
from tests.ai_space.conftest import TOKEN

MODEL = "SmolLM2-135M-Instruct"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HI = [{"role": "user", "content": "Say hello to the world."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def require_engine() -> None:
    """Skip, saying why, where llama-server is not built (`make venv` builds it); in CI, where
    `make test` built it, fail instead."""
    try:
        engine_binary()
    except EngineMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"llama-server is missing under CI: {exc}")
        pytest.skip(f"llama-server is not installed here: {exc}")


def fake_build(home: Path, server_script: str = "") -> Path:
    """A build folder laid out as build_server.sh makes it (a BUILD record, one variant's folder
    with its CPU library), whose llama-server is this script; the script's path."""
    (home / "haswell").mkdir(parents=True)
    (home / "BUILD").write_text("version 0.3.36\nvariants haswell:SSE42,AVX,F16C,FMA,AVX2,BMI2\n")
    (home / "haswell" / "libggml-cpu-haswell.so").write_bytes(b"")
    server = home / "haswell" / "llama-server"
    server.write_text(server_script)
    server.chmod(0o755)
    return server


def llama_settings(**values: object) -> Settings:
    """A llama.cpp worker on the packaged models, small enough for tests."""
    base = {"api_token": SecretStr(TOKEN), "engine": "llama.cpp", "max_concurrency": 4,
            "max_queue": 8, "max_tokens": 64, "n_ctx": 4096, "max_input_tokens": 2048,
            "n_threads": 1}
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def engine_get(process: EngineProcess, path: str, body: Any = None) -> Any:
    """GET (or, with a body, POST) to an engine over its socket, with its key (what only the
    front can do)."""
    transport = httpx.HTTPTransport(uds=str(process.socket))
    with httpx.Client(transport=transport, base_url="http://engine", timeout=10) as client:
        response = client.request("GET" if body is None else "POST", path, json=body,
                                  headers={"Authorization": f"Bearer {process.key}"})
    response.raise_for_status()
    return response.json()


def busy_slots(process: EngineProcess) -> int:
    """How many of llama-server's slots are processing, from its own /slots."""
    return sum(1 for slot in engine_get(process, "/slots") if slot.get("is_processing"))


def decoded(process: EngineProcess) -> int:
    """Tokens decoded so far by the busiest slot that is processing (0 when none is)."""
    return max((int((slot.get("next_token") or [{}])[0].get("n_decoded", 0))
                for slot in engine_get(process, "/slots") if slot.get("is_processing")),
               default=0)


def decode_steps(process: EngineProcess) -> int:
    """llama-server's count of llama_decode() calls so far, from its own /metrics."""
    transport = httpx.HTTPTransport(uds=str(process.socket))
    with httpx.Client(transport=transport, base_url="http://engine", timeout=10) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {process.key}"}).text
    return int(float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("llamacpp:n_decode_total "))))


def token_time(process: EngineProcess, tokens: int = 3) -> float:
    """Seconds a token takes now, timed on a slot that is decoding (from its own count)."""
    wait_until(lambda: decoded(process) >= 2, 60)
    start = decoded(process)
    took = wait_until(lambda: decoded(process) >= start + tokens, 60)
    return took / tokens


def wait_until(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.002) -> float:
    """Poll until the condition holds; the seconds it took (AssertionError past the deadline)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        time.sleep(step_s)
    return time.monotonic() - started


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any] | str]:
    """The data of each SSE event ("[DONE]" as a string)."""
    import json

    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)


@dataclass
class Reply:
    """One answer, streamed or not, in one shape."""

    text: str = ""
    finish: str | None = None
    usage: Any = None
    logprobs: list[Any] = field(default_factory=list)
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)
    chunks: int = 0


def ask(client: openai.OpenAI, stream: bool, messages: Any = None, **extra: Any) -> Reply:
    """Ask once, streamed (chunks assembled here) or not."""
    body: dict[str, Any] = {"model": MODEL, "messages": messages or HI, "max_tokens": 24,
                            "temperature": 0, **extra}
    reply = Reply()
    if not stream:
        answer = client.chat.completions.create(**body)
        choice = answer.choices[0]
        reply.text, reply.finish, reply.usage = (choice.message.content or "",
                                                 choice.finish_reason, answer.usage)
        reply.logprobs = list(choice.logprobs.content or []) if choice.logprobs else []
        for i, call in enumerate(choice.message.tool_calls or []):
            reply.tool_calls[i] = {"name": call.function.name,
                                   "arguments": call.function.arguments}
        return reply
    for chunk in client.chat.completions.create(**body, stream=True):
        reply.chunks += 1
        reply.usage = chunk.usage or reply.usage
        for choice in chunk.choices:
            reply.text += choice.delta.content or ""
            reply.finish = choice.finish_reason or reply.finish
            if choice.logprobs and choice.logprobs.content:
                reply.logprobs += choice.logprobs.content
            for piece in choice.delta.tool_calls or []:
                call = reply.tool_calls.setdefault(piece.index, {"name": "", "arguments": ""})
                if piece.function:
                    call["name"] += piece.function.name or ""
                    call["arguments"] += piece.function.arguments or ""
    return reply
