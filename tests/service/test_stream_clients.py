"""The real clients' matrix (issue 18): openai sync, async and `.stream()`, langchain-openai and
LiteLLM, each driven the way people use it through the service, over four streams: a clean
one, a failover before content, a failover after content, and one that no backend can finish.
Each client's own view is asserted: the text it read, and the exception where one is due."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.fakes.stream_backend import StreamBackend
from tests.support.streams import MESSAGES, running_service, service_env

FULL = " ".join(f"t{i}" for i in range(10))
# Both cut after 3 words: the worker continued the Space's 3 with 3 more before its cut.
PARTIAL = "t0 t1 t2 t3 t4 t5"

Seen = tuple[str, BaseException | None]


def _openai_sync(base: str) -> Seen:
    text = ""
    try:
        with openai.OpenAI(base_url=base, api_key="unused", max_retries=0) as client:
            for chunk in client.chat.completions.create(model="llm", messages=MESSAGES,
                                                        stream=True):
                text += chunk.choices[0].delta.content or ""
    except openai.APIError as exc:
        return text, exc
    return text, None


def _openai_async(base: str) -> Seen:
    async def read() -> Seen:
        text = ""
        try:
            async with openai.AsyncOpenAI(base_url=base, api_key="unused",
                                          max_retries=0) as client:
                async for chunk in await client.chat.completions.create(
                        model="llm", messages=MESSAGES, stream=True):
                    text += chunk.choices[0].delta.content or ""
        except openai.APIError as exc:
            return text, exc
        return text, None

    return asyncio.run(read())


def _openai_stream_helper(base: str) -> Seen:
    text = ""
    try:
        with openai.OpenAI(base_url=base, api_key="unused", max_retries=0) as client, \
                client.chat.completions.stream(model="llm", messages=MESSAGES) as stream:
            for event in stream:
                if event.type == "content.delta":
                    text += event.delta
            final = stream.get_final_completion()
        assert final.choices[0].message.content == text
    except openai.APIError as exc:
        return text, exc
    return text, None


def _langchain(base: str) -> Seen:
    from langchain_openai import ChatOpenAI

    text = ""
    chat = ChatOpenAI(base_url=base, api_key="unused", model="llm",  # type: ignore[arg-type]
                      max_retries=0)
    try:
        for piece in chat.stream("Write a proposal."):
            text += str(piece.content)
    except openai.APIError as exc:
        return text, exc
    return text, None


def _litellm(base: str) -> Seen:
    import litellm

    text = ""
    try:
        for chunk in litellm.completion(model="openai/llm", api_base=base, api_key="unused",
                                        messages=MESSAGES, stream=True, num_retries=0):
            text += chunk.choices[0].delta.content or ""
    except openai.APIError as exc:  # LiteLLM's exceptions derive from openai's
        return text, exc
    return text, None


CLIENTS: dict[str, Callable[[str], Seen]] = {
    "openai-sync": _openai_sync, "openai-async": _openai_async,
    "openai-stream-helper": _openai_stream_helper, "langchain-openai": _langchain,
    "litellm": _litellm,
}


def _raised_by(client: str) -> type[BaseException]:
    """The exception each client raises on the stream's error event."""
    if client == "litellm":
        import litellm

        # LiteLLM wraps a failure after content as one it could fall back from.
        return litellm.exceptions.MidStreamFallbackError
    return openai.APIError
# Each stream: how the Space and the worker behave, the text every client must read, and
# whether its reading must end in the client's own exception.
STREAMS: dict[str, tuple[dict[str, Any], dict[str, Any], str, bool]] = {
    "clean": ({}, {}, FULL, False),
    "failover-before-content": ({"mode": "status:503"}, {}, FULL, False),
    "failover-after-content": ({"mode": "cut"}, {}, FULL, False),
    "nothing-left": ({"mode": "cut"}, {"mode": "cut"}, PARTIAL, True),
}


@pytest.fixture(autouse=True)
def _litellm_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM fetches its model price list at import unless told to use its own copy; no
    # network here but loopback.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.mark.parametrize("stream", list(STREAMS))
@pytest.mark.parametrize("client", list(CLIENTS))
def test_each_client_reads_each_stream(make_main, backends: dict[str, StreamBackend],
                                       hub: Any, client: str, stream: str):
    """GIVEN the service over a Space and a worker that behave as the stream says WHEN the
    client streams a chat its usual way THEN it reads the whole answer once (clean, or across
    either failover), or, when no backend can finish, the partial text and then its own
    exception: never an answer that looks finished."""
    space, worker, text, fails = STREAMS[stream]
    for name, value in space.items():
        setattr(backends["space"], name, value)
    for name, value in worker.items():
        setattr(backends["worker"], name, value)
    env = service_env(backends["worker"].url, backends["space"].url, hub.url,
                      FIRST_TOKEN_TIMEOUT_MS="2000", STREAM_STALL_TIMEOUT_MS="1000")
    with running_service(make_main, env) as service:
        seen, error = CLIENTS[client](f"{service.function_url}/v1")
    assert seen == text
    if fails:
        assert isinstance(error, _raised_by(client)), repr(error)
        assert "no backend" in str(error)
    else:
        assert error is None, repr(error)
