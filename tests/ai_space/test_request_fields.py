"""Every OpenAI chat-completions field is honoured or refused by name, never dropped: the
transformers engine (tiny model), through the real openai client; and the logit fields it
serves (logprobs, logit_bias, penalties)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, completion_create_params
from transformers import AutoTokenizer

from ai_space.request_fields import DOCUMENTED
from tests.support.loopback import LoopbackServer

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello world"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {
                                             "city": {"type": "string"}}}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
    "additionalProperties": False}}}

# (field sent, its value): each asks for something the transformers engine does not do.
REFUSED: list[tuple[str, Any]] = [
    ("tools", [TOOL]),
    ("tool_choice", "required"),
    ("functions", [TOOL["function"]]),
    ("function_call", {"name": "get_weather"}),
    ("n", 2),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "hello"}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("web_search_options", {}),
    ("store", True),
    ("service_tier", "priority"),
    ("response_format", {"type": "json_object"}),
    ("response_format", SCHEMA),
    ("top_k", 5),  # a vendor extension, not an OpenAI field
]
# Fields whose values ask for nothing beyond a plain answer, or are bookkeeping only.
ACCEPTED: dict[str, Any] = {
    "user": "u-1", "metadata": {"app": "test"}, "safety_identifier": "s-1",
    "prompt_cache_key": "k", "store": False, "service_tier": "auto", "n": 1,
    "modalities": ["text"], "tool_choice": "none", "parallel_tool_calls": True,
    "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {},
    "response_format": {"type": "text"}, "seed": 3, "stop": ["zzz"], "tools": [],
}


@pytest.fixture
def client(tiny_server: LoopbackServer, make_client: Callable[..., openai.OpenAI]
           ) -> openai.OpenAI:
    """An openai client pointed at the tiny transformers server."""
    return make_client(tiny_server.url)


def test_the_table_covers_every_field_the_openai_client_sends() -> None:
    """GIVEN the installed openai client's chat-completions parameters WHEN compared with the
    server's table THEN each is listed as served, bookkeeping or refused (a field added to
    the client must be decided on, not silently dropped)."""
    sent = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsBase))
    assert sent - DOCUMENTED == set()


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=[f"{f}-{i}" for i, (f, _) in
                                                            enumerate(REFUSED)])
@pytest.mark.parametrize("stream", [False, True])
def test_unhonoured_fields_are_refused_by_name(client: openai.OpenAI, field: str, value: Any,
                                               stream: bool) -> None:
    """GIVEN the transformers engine WHEN a request asks for something it cannot do (tool
    calls, JSON output, several choices, audio, an unknown field), streamed or not, THEN
    the openai client raises BadRequestError with code unsupported_parameter and `param`
    naming the field, instead of a 200 that ignored it."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=HELLO, max_tokens=2, stream=stream,
                                       extra_body={field: value})
    error = caught.value
    assert (error.code, error.param) == ("unsupported_parameter", field), error.body
    assert field in error.message


def test_harmless_fields_are_accepted(client: openai.OpenAI) -> None:
    """GIVEN fields that carry bookkeeping or their default value WHEN sent together THEN the
    answer is the same as without them."""
    plain = client.chat.completions.create(model="m", messages=HELLO, max_tokens=6,
                                           temperature=0)
    answer = client.chat.completions.create(model="m", messages=HELLO, max_tokens=6,
                                            temperature=0, extra_body=ACCEPTED)
    assert answer.choices[0].message.content == plain.choices[0].message.content
    assert answer.choices[0].logprobs is None


def test_nulls_mean_absent(client: openai.OpenAI) -> None:
    """GIVEN refused fields sent as JSON null WHEN asked THEN they count as not sent: 200."""
    nulls = {field: None for field, _ in REFUSED}
    answer = client.chat.completions.create(model="m", messages=HELLO, max_tokens=2,
                                            extra_body=nulls)
    assert answer.choices[0].message.content


def test_message_fields_that_cannot_be_rendered_are_refused(client: openai.OpenAI) -> None:
    """GIVEN an assistant turn that made a tool call (or carries audio) WHEN sent back THEN
    unsupported_parameter naming that message's field; GIVEN a message as the openai client
    dumps it (tool_calls, audio, refusal and function_call all null) and a `name` THEN 200."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    for key, value in (("tool_calls", [call]), ("audio", {"id": "a1"}),
                       ("function_call", {"name": "f", "arguments": "{}"})):
        turns: Any = [HELLO[0], {"role": "assistant", "content": "", key: value},
                      {"role": "user", "content": "and?"}]
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", messages=turns, max_tokens=2)
        assert (caught.value.code, caught.value.param) == ("unsupported_parameter",
                                                           f"messages[1].{key}")
    dumped: Any = [{"role": "user", "content": "hello world", "name": "ann"},
                   {"role": "assistant", "content": "hi", "tool_calls": None, "audio": None,
                    "refusal": None, "function_call": None, "annotations": []},
                   {"role": "user", "content": "and?"}]
    answer = client.chat.completions.create(model="m", messages=dumped, max_tokens=2)
    assert answer.choices[0].message.content


def test_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    """GIVEN logprobs with top_logprobs=2, greedy WHEN asked whole and streamed THEN one entry
    per generated token, tokens joining into the text, each chosen token the most likely one,
    and the stream's entries equal the whole answer's."""
    whole = client.chat.completions.create(model="m", messages=HELLO, max_tokens=8,
                                           temperature=0, logprobs=True, top_logprobs=2)
    assert whole.choices[0].logprobs is not None and whole.usage is not None
    entries = whole.choices[0].logprobs.content or []
    assert len(entries) == whole.usage.completion_tokens == 8
    # A token may end mid-character: its bytes join into the text, its `token` may not.
    joined = b"".join(bytes(e.bytes or []) for e in entries)
    assert joined.decode("utf-8", "replace") == whole.choices[0].message.content
    for e in entries:
        assert e.top_logprobs[0].token == e.token
        assert e.logprob == e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
    streamed = [(e.token, round(e.logprob, 4))
                for c in client.chat.completions.create(
                    model="m", messages=HELLO, max_tokens=8, temperature=0, stream=True,
                    logprobs=True, top_logprobs=2)
                if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content or []]
    assert streamed == [(e.token, round(e.logprob, 4)) for e in entries]


def test_logit_bias_and_penalties(client: openai.OpenAI, tiny_chat_dir: Path) -> None:
    """GIVEN the tiny model WHEN a token gets logit_bias +100 THEN the greedy answer is that
    token over and over; WHEN an id outside the vocabulary is biased THEN 400 naming
    logit_bias; WHEN frequency_penalty is 2 THEN the most repeated token comes fewer times."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    fox = tokenizer.encode("fox")[0]
    forced = client.chat.completions.create(model="m", messages=HELLO, max_tokens=4,
                                            temperature=0, logit_bias={str(fox): 100})
    assert forced.choices[0].message.content == tokenizer.decode([fox] * 4)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=HELLO, max_tokens=4,
                                       logit_bias={"99999": 1})
    assert caught.value.param == "logit_bias"
    counts = []
    for penalty in (0.0, 2.0):
        answer = client.chat.completions.create(model="m", messages=HELLO, max_tokens=32,
                                                temperature=0, frequency_penalty=penalty,
                                                logprobs=True)
        assert answer.choices[0].logprobs is not None
        tokens = [bytes(e.bytes or []) for e in answer.choices[0].logprobs.content or []]
        counts.append(max(tokens.count(t) for t in set(tokens)))
    assert counts[1] < counts[0], counts
