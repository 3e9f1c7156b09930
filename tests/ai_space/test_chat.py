"""Chat completions through the real openai and huggingface_hub clients, on a tiny model."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from openai.types.chat import ChatCompletionMessageParam

from tests.ai_space.conftest import TOKEN
from tests.support.loopback import LoopbackServer

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello world"}]


@pytest.fixture
def client(tiny_server: LoopbackServer, make_client: Callable[..., openai.OpenAI]
           ) -> openai.OpenAI:
    """An openai client pointed at the tiny server."""
    return make_client(tiny_server.url)


def test_completion_has_text_usage_and_model(client: openai.OpenAI) -> None:
    """GIVEN a ready server WHEN a greedy completion is asked THEN text, usage and the served
    name come back."""
    answer = client.chat.completions.create(model="anything", messages=HELLO,
                                            max_tokens=8, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.model == "tiny-llama"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8


def test_stream_matches_the_whole_answer(client: openai.OpenAI) -> None:
    """GIVEN greedy decoding WHEN the same request is streamed THEN the chunks join to the same
    text, the first delta carries the role, and the stream ends with a finish reason and usage."""
    whole = client.chat.completions.create(messages=HELLO, model="m",
                                           max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(
        messages=HELLO, model="m", max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


def test_stream_wire_format(tiny_server: LoopbackServer) -> None:
    """GIVEN a streaming request WHEN read raw THEN it is text/event-stream, `data: ...` events
    separated by blank lines, ending with `data: [DONE]`."""
    with httpx.stream("POST", f"{tiny_server.url}/v1/chat/completions",
                      headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"messages": HELLO, "max_tokens": 3, "stream": True}) as response:
        body = response.read().decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = body.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    """GIVEN temperature 1 and a seed WHEN asked twice THEN the answers are the same."""
    answers = {client.chat.completions.create(
        messages=HELLO, model="m", max_tokens=10, temperature=1.0,
        top_p=0.9, seed=7).choices[0].message.content for _ in range(2)}
    assert len(answers) == 1


def test_stop_string_ends_the_answer_before_it(client: openai.OpenAI) -> None:
    """GIVEN a stop string taken from the greedy answer WHEN asked again with it THEN the answer
    ends just before it, with finish_reason stop."""
    full = client.chat.completions.create(messages=HELLO, model="m", max_tokens=20,
                                          temperature=0).choices[0].message.content or ""
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip(), f"greedy answer too short to pick a stop string from: {full!r}"
    cut = client.chat.completions.create(messages=HELLO, model="m", max_tokens=20,
                                         temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[:full.index(stop)]


def test_max_tokens_is_capped(client: openai.OpenAI) -> None:
    """GIVEN MAX_TOKENS=64 WHEN a client asks for 10000 THEN it gets at most 64 tokens."""
    answer = client.chat.completions.create(messages=HELLO, model="m",
                                            max_completion_tokens=10_000, temperature=0)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 64


def test_content_parts_and_system_turns(client: openai.OpenAI) -> None:
    """GIVEN a system turn and a user turn made of text parts WHEN sent THEN it is answered."""
    answer = client.chat.completions.create(model="m", max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello "},
                                     {"type": "text", "text": "world"}]}])
    assert answer.choices[0].message.content


def test_models_lists_chat_and_embedding_model(client: openai.OpenAI) -> None:
    """GIVEN a server with both models WHEN /v1/models is read THEN both names are listed."""
    names = [m.id for m in client.models.list()]
    assert names[0] == "tiny-llama"
    assert len(names) == 2


def test_huggingface_inference_client(tiny_server: LoopbackServer) -> None:
    """GIVEN huggingface_hub's InferenceClient with base_url WHEN chat_completion is called,
    whole and streamed, THEN both return the assistant's text."""
    with InferenceClient(base_url=tiny_server.url, api_key=TOKEN) as hf:
        _chat_both_ways(hf)


def _chat_both_ways(hf: InferenceClient) -> None:
    turns = [{"role": "user", "content": "hello world"}]
    answer = hf.chat_completion(messages=turns, max_tokens=5, temperature=0)
    assert answer.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in hf.chat_completion(
        messages=turns, max_tokens=5, temperature=0, stream=True))
    assert streamed == answer.choices[0].message.content
