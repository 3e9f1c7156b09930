"""The llama.cpp engine serving OpenAI's sampling and output fields on the real SmolLM2 GGUF:
structured output through llama.cpp's grammar, logprobs, logit_bias, penalties; and refusing
by name what it cannot do."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, SecretStr

from ai_space import Finished, Hooks, Settings
from ai_space.errors import BadRequest
from ai_space.llama.constraints import Grammar, grammar_for
from ai_space.schema import ResponseFormat
from tests.ai_space.conftest import TOKEN, serve

MakeClient = Callable[..., openai.OpenAI]
MODEL = "SmolLM2-135M-Instruct"
FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in JSON."}]

pytestmark = pytest.mark.slow


class City(BaseModel):
    """What `.parse()` asks the model for."""

    name: str
    country: str
    population_millions: float


_SETTINGS = Settings(api_token=SecretStr(TOKEN), engine="llama.cpp", max_concurrency=4,
                     max_queue=8, max_tokens=96, n_ctx=2048, max_input_tokens=1024,
                     embedding_model_id=None)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Any]]:
    """One ready llama.cpp server on the packaged SmolLM2, chat only: its URL and its app."""
    with serve(_SETTINGS) as (server, app):
        assert app.state.host.engine == "llama.cpp"
        yield server.url, app


@pytest.fixture
def client(served: tuple[str, Any], make_client: MakeClient) -> openai.OpenAI:
    """An openai client pointed at the llama.cpp server."""
    return make_client(served[0])


def _ask(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=FRANCE, **{"max_tokens": 24, "temperature": 0, **extra})


def test_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    """GIVEN SmolLM2 on llama.cpp WHEN the openai client's `.parse()` asks for a City (a strict
    json_schema), greedy and sampled with a seed THEN the answer parses into a City both times,
    and the same seed gives the same City."""
    greedy = client.chat.completions.parse(model=MODEL, messages=FRANCE, response_format=City,
                                           max_tokens=96, temperature=0)
    parsed = greedy.choices[0].message.parsed
    assert isinstance(parsed, City), greedy.choices[0].message.content
    assert greedy.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.parse(model=MODEL, messages=FRANCE, response_format=City,
                                             max_tokens=96, temperature=1.0, seed=5)
               for _ in range(2)]
    assert all(isinstance(s.choices[0].message.parsed, City) for s in sampled)
    assert sampled[0].choices[0].message.parsed == sampled[1].choices[0].message.parsed


def test_json_object_streams_one_json_object(client: openai.OpenAI) -> None:
    """GIVEN response_format json_object and a prompt that does not ask for JSON WHEN streamed
    THEN the deltas join into one JSON object, and the stream ends with finish_reason stop."""
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about Paris."}],
        max_tokens=96, temperature=0, stream=True,
        response_format={"type": "json_object"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict), text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_in_openais_shape(client: openai.OpenAI) -> None:
    """GIVEN logprobs with top_logprobs=3, greedy WHEN asked whole and streamed THEN there is
    one entry per generated token, the tokens join into the text, each chosen token is the
    most likely one (greedy), log-probabilities are <= 0 and sorted, and the stream carries
    the same entries as the whole answer."""
    whole = _ask(client, logprobs=True, top_logprobs=3)
    choice = whole.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == whole.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert len(e.top_logprobs) == 3
        assert e.top_logprobs[0].token == e.token
        assert e.logprob == e.top_logprobs[0].logprob <= 0
        assert [t.logprob for t in e.top_logprobs] == sorted(
            (t.logprob for t in e.top_logprobs), reverse=True)
        assert bytes(e.bytes or []).decode("utf-8", "replace") == e.token
    streamed = [entry for c in _ask(client, logprobs=True, top_logprobs=3, stream=True)
                if c.choices and c.choices[0].logprobs
                for entry in c.choices[0].logprobs.content or []]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in entries]


def test_logit_bias_and_penalties_change_the_answer(client: openai.OpenAI,
                                                    served: tuple[str, Any]) -> None:
    """GIVEN a greedy answer WHEN its first token is banned with logit_bias -100 THEN the
    answer starts differently; WHEN a token gets +100 THEN the answer is that token over and
    over; WHEN frequency_penalty is 2 THEN the most repeated token of a repetitive answer
    comes fewer times."""
    plain = _ask(client, logprobs=True)
    first = plain.choices[0].logprobs.content[0].token
    vocab = served[1].state.host.chat.vocab  # the server's own vocabulary
    first_id = vocab.encode(first)[0]
    banned = _ask(client, logit_bias={str(first_id): -100}, logprobs=True)
    assert banned.choices[0].logprobs.content[0].token != first
    forced_id = vocab.encode(" banana")[0]
    forced = _ask(client, max_tokens=5, logit_bias={str(forced_id): 100})
    assert forced.choices[0].message.content == vocab.decode([forced_id] * 5)
    loop: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Say the word 'cat' fifty times, separated by spaces."}]
    counts = []
    for penalty in (0.0, 2.0):
        answer = client.chat.completions.create(model=MODEL, messages=loop, max_tokens=48,
                                                temperature=0, frequency_penalty=penalty,
                                                logprobs=True)
        logprobs = answer.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        tokens = [e.token for e in logprobs.content]
        counts.append(max(tokens.count(t) for t in set(tokens)))
    assert counts[1] < counts[0], counts


def test_shaping_stays_with_its_request(served: tuple[str, Any],
                                        make_client: MakeClient) -> None:
    """GIVEN a plain greedy request, one whose logit_bias forces a token and one held to a
    JSON grammar, all queued while the decode loop is held WHEN released, so that they are
    prefilled and decoded in one batch THEN the plain answer equals the one it gets alone,
    and each shaped answer is what its fields asked for."""
    vocab = served[1].state.host.chat.vocab
    forced_id = vocab.encode(" banana")[0]
    alone = _ask(make_client(served[0])).choices[0].message.content
    finished: queue.Queue[Finished] = queue.Queue()
    step = threading.Event()
    with serve(_SETTINGS, Hooks(step_gate=step, on_finish=finished.put)) as (server, _):
        client = make_client(server.url)
        jobs: list[dict[str, Any]] = [
            {}, {"logit_bias": {str(forced_id): 100}, "max_tokens": 5},
            {"response_format": {"type": "json_object"}, "max_tokens": 96}]
        streams = [iter(_ask(client, stream=True, **job)) for job in jobs]
        for stream in streams:
            assert next(stream).choices[0].delta.role == "assistant"  # queued
        step.set()
        texts = ["".join(c.choices[0].delta.content or "" for c in s if c.choices)
                 for s in streams]
        sizes = [finished.get(timeout=120).batch_size for _ in jobs]
    assert sizes == [3, 3, 3]
    assert texts[0] == alone
    assert texts[1] == vocab.decode([forced_id] * 5)
    assert isinstance(json.loads(texts[2]), dict), texts[2]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "tools", "unsupported_parameter"),
    ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
    ({"n": 3}, "n", "unsupported_parameter"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
    ({"logit_bias": {"999999": 5}}, "logit_bias", "invalid_request"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "minItems": 10**6}}}},
     "response_format", "invalid_json_schema"),
])
def test_what_llama_cannot_do_is_refused_by_name(client: openai.OpenAI, body: dict[str, Any],
                                                 param: str, code: str) -> None:
    """GIVEN the llama.cpp engine WHEN asked for tool calls, several choices, audio, a token id
    outside the vocabulary or a schema too big for a grammar THEN BadRequestError naming the
    field, never a 200 that ignored it."""
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, extra_body=body)
    assert (caught.value.code, caught.value.param) == (code, param), caught.value.body


_KEYWORDS = st.sampled_from([
    "type", "properties", "items", "required", "enum", "const", "anyOf", "oneOf", "allOf",
    "$ref", "$defs", "pattern", "minItems", "maxItems", "minLength", "maxLength", "format",
    "additionalProperties", "minimum", "maximum", "prefixItems", "patternProperties"])
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.text(max_size=5),
    st.sampled_from(["string", "object", "array", "integer", "number", "boolean", "null", "#",
                     "#/$defs/a", "date", "uuid", "^a+$", "[a-", "(x|y)*"]))
_SCHEMAS = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(_KEYWORDS, st.text(max_size=4)), inner, max_size=4)),
    max_leaves=15)


def test_any_schema_gets_a_grammar_or_a_400(served: tuple[str, Any]) -> None:
    """GIVEN arbitrary JSON schemas (keywords, broken refs and patterns, odd types) WHEN each
    is turned into a grammar and given to llama.cpp THEN it builds, or BadRequest names
    response_format: no other exception, and the process survives."""
    vocab = served[1].state.host.chat.vocab.vocab
    outcomes = {"built": 0, "refused": 0, "unnamed": 0}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_SCHEMAS)
    def one(schema: Any) -> None:
        if not isinstance(schema, dict):
            schema = {"type": "object", "properties": {"a": schema}}
        try:
            gbnf = grammar_for(ResponseFormat.model_validate(
                {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
            assert gbnf is not None
            Grammar(vocab, gbnf).close()
            outcomes["built"] += 1
        except BadRequest as exc:
            outcomes["refused" if exc.param == "response_format" else "unnamed"] += 1

    one()
    assert outcomes["built"] > 0 and outcomes["refused"] > 0 and not outcomes["unnamed"], \
        outcomes
