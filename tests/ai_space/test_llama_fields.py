"""Each request field of the README's table on the real SmolLM2 behind llama-server, streamed
and not: passed on and honoured, or refused by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.ai_space.conftest import serve
from tests.ai_space.llama_support import (
    AUTH,
    HI,
    MODEL,
    WEATHER_TOOL,
    ask,
    llama_settings,
    require_engine,
)

MakeClient = Callable[..., openai.OpenAI]
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
pytestmark = pytest.mark.slow


class City(BaseModel):
    """What `.parse()` asks the model for."""

    name: str
    country: str


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """One ready worker on the packaged SmolLM2, chat only."""
    require_engine()
    with serve(llama_settings(max_tokens=96, embedding_model_id=None)) as (server, _):
        yield server.url


@pytest.fixture
def client(served: str, make_client: MakeClient) -> openai.OpenAI:
    """An openai client pointed at the worker."""
    return make_client(served)


STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])


@STREAMED
def test_max_tokens_stop_and_usage(client: openai.OpenAI, stream: bool) -> None:
    """GIVEN max_tokens / max_completion_tokens and stop WHEN answered THEN the answer ends at
    the cap (finish length, that many tokens) or before the stop string (finish stop); usage
    comes whole, and in a stream only when stream_options asks for it."""
    capped = ask(client, stream, max_completion_tokens=5,
                 stream_options={"include_usage": True} if stream else None)
    assert capped.finish == "length" and capped.usage.completion_tokens == 5
    full = ask(client, stream)
    assert (full.usage is None) == stream
    word = full.text.split()[1]
    stopped = ask(client, stream, stop=[word])
    assert stopped.finish == "stop" and word not in stopped.text
    assert full.text.startswith(stopped.text.rstrip())


@STREAMED
def test_temperature_top_p_and_seed(client: openai.OpenAI, stream: bool) -> None:
    """GIVEN temperature 1.5 and top_p WHEN asked twice with one seed THEN the same answer;
    with other seeds, other answers."""
    one = ask(client, stream, temperature=1.5, top_p=0.95, seed=11, max_tokens=16)
    assert ask(client, stream, temperature=1.5, top_p=0.95, seed=11, max_tokens=16).text \
        == one.text
    others = {ask(client, stream, temperature=1.5, top_p=0.95, seed=s, max_tokens=16).text
              for s in (1, 2, 3)}
    assert others - {one.text}


@STREAMED
def test_logprobs_in_openais_shape(client: openai.OpenAI, stream: bool) -> None:
    """GIVEN logprobs with top_logprobs 3 WHEN answered THEN one entry per token, each with
    its bytes and 3 alternatives, the chosen one's logprob at most 0."""
    reply = ask(client, stream, logprobs=True, top_logprobs=3, max_tokens=8)
    assert len(reply.logprobs) == 8
    for entry in reply.logprobs:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.bytes is not None
    assert "".join(e.token for e in reply.logprobs) == reply.text


@STREAMED
def test_logit_bias_and_penalties_change_the_answer(client: openai.OpenAI, stream: bool) -> None:
    """GIVEN the greedy answer WHEN its first token is banned by logit_bias, or penalties are
    strong THEN the answer changes; a token id outside the vocabulary is a 400 naming
    logit_bias."""
    plain = ask(client, stream, logprobs=True, max_tokens=12)
    # llama-server's log-probability entries carry each token's id beside OpenAI's fields.
    banned_id = int((plain.logprobs[0].model_extra or {})["id"])
    banned = ask(client, stream, logit_bias={str(banned_id): -100}, max_tokens=12)
    assert banned.text != plain.text
    assert ask(client, stream, presence_penalty=2.0, frequency_penalty=2.0,
               messages=[{"role": "user", "content": "Repeat: ha ha ha ha ha ha ha ha"}],
               max_tokens=16).text != ask(
        client, stream, messages=[{"role": "user", "content": "Repeat: ha ha ha ha ha ha ha"
                                   " ha"}], max_tokens=16).text
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, stream, logit_bias={"999999": 5})
    assert caught.value.param == "logit_bias"


@STREAMED
def test_json_schema_and_json_object(client: openai.OpenAI, stream: bool) -> None:
    """GIVEN response_format json_schema (from a pydantic model) and json_object WHEN answered
    THEN the text is JSON of that shape; a schema llama.cpp cannot convert is a 400 naming
    response_format."""
    schema = {"type": "json_schema", "json_schema": {
        "name": "City", "schema": City.model_json_schema(), "strict": True}}
    reply = ask(client, stream, messages=FRANCE, response_format=schema, max_tokens=64)
    if reply.finish == "stop":
        City.model_validate_json(reply.text)
    assert reply.text.lstrip().startswith("{")
    obj = ask(client, stream, messages=FRANCE, response_format={"type": "json_object"},
              max_tokens=64)
    assert obj.text.lstrip().startswith("{")
    if not stream:
        parsed = client.chat.completions.parse(model=MODEL, messages=FRANCE,  # type: ignore[arg-type]
                                               response_format=City, max_tokens=64,
                                               temperature=0)
        if parsed.choices[0].finish_reason == "stop":
            assert isinstance(parsed.choices[0].message.parsed, City)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, stream, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "$ref": "#/nowhere"}}})
    assert caught.value.param == "response_format"


@STREAMED
def test_tools_are_refused_by_name_where_the_template_has_none(client: openai.OpenAI,
                                                               stream: bool) -> None:
    """GIVEN SmolLM2-135M, whose chat template has no tool calling (llama-server would render
    the chat without the tools and answer in text) WHEN tools, a required tool_choice, or a
    tool's answer in the history come THEN 400 naming the field; empty tools and
    tool_choice none are answered."""
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"}]
    for extra, param in (({"tools": [WEATHER_TOOL]}, "tools"),
                         ({"tool_choice": "required"}, "tool_choice"),
                         ({"messages": history}, "messages[1].role")):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, stream, **extra)
        assert (caught.value.code, caught.value.param) == ("unsupported_parameter", param)
    assert ask(client, stream, tools=[], tool_choice="none", max_tokens=4).text


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 3}, "n"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"top_k": 3}, "top_k"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
])
def test_what_llama_server_cannot_do_is_refused_by_name(served: str, body: dict[str, Any],
                                                        param: str) -> None:
    """GIVEN fields the worker does not serve WHEN sent THEN 400 unsupported_parameter naming
    the field, in our error body, never a 200 that ignored it."""
    answer = httpx.post(f"{served}/v1/chat/completions", headers=AUTH,
                        json={"messages": HI, **body}, timeout=30)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "unsupported_parameter", param, "invalid_request_error")


def test_a_prompt_over_the_limit_is_400(make_client: MakeClient) -> None:
    """GIVEN MAX_INPUT_TOKENS 64 WHEN a longer prompt comes THEN 400 context_length_exceeded,
    counted on the rendered template; a short one is answered."""
    with serve(llama_settings(max_input_tokens=64, embedding_model_id=None)) as (server, _):
        long = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=30,
                          json={"messages": [{"role": "user", "content": "word " * 200}]})
        assert long.status_code == 400
        assert long.json()["error"]["code"] == "context_length_exceeded"
        assert ask(make_client(server.url), False, max_tokens=4).text
