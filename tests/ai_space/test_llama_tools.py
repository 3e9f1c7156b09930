"""Tool calling passed through the front to llama-server, on a model whose chat template renders
tools: the packaged SmolLM2 GGUF given the tool layout of Qwen 2.5's template (signatures in the
system turn, each call as JSON inside <tool_call> tags), which llama-server's parser reads.

SmolLM2-135M never opens a call on its own, even where tool_choice is required (llama-server's
grammar lets text come before the call). Its `<` token made likelier (logit_bias +6, the middle
of what worked: +4 never opened a call, +10 wrote only `<`) is enough; the grammar then holds
the call to the tool's shape. Prompt token counts show which tools reached the template."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ai_space.models.packaged import resolve
from tests.ai_space.conftest import serve
from tests.ai_space.llama_support import (
    MODEL,
    WEATHER_TOOL,
    ask,
    engine_get,
    llama_settings,
    require_engine,
)

pytestmark = pytest.mark.slow

# Qwen 2.5's template, its default system line shortened.
TEMPLATE = Path(__file__).with_name("qwen2.5_tools.jinja")
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged SmolLM2 GGUF, copied with the tools template in its metadata."""
    source = resolve("pkg:smollm2", None).gguf_path
    assert source is not None
    target = tmp_path_factory.mktemp("smollm2-tools") / "SmolLM2-135M-Instruct-tools.gguf"
    # gguf's own script, as a model's publisher sets a template.
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(source),
                    str(target), "--chat-template-file", str(TEMPLATE), "--force"],
                   check=True, capture_output=True, timeout=120)
    shutil.copymode(source, target)
    return target


@pytest.fixture(scope="module")
def worker(tool_model: Path) -> Iterator[tuple[openai.OpenAI, dict[str, int]]]:
    """An openai client on a worker serving that model, and the nudge (logit_bias) that
    makes it open a call."""
    require_engine()
    settings = llama_settings(model_id=str(tool_model.parent), model_file=tool_model.name,
                              served_model_name=MODEL, weights="file", max_tokens=96,
                              embedding_model_id=None)
    with serve(settings) as (server, app):
        engines = app.state.host.engines
        assert engines.chat.tools, "llama-server did not find tools in the template"
        angle = engine_get(engines.chat_process, "/tokenize", {"content": "<"})["tokens"]
        assert len(angle) == 1
        with openai.OpenAI(base_url=f"{server.url}/v1", max_retries=0,
                           api_key=settings.api_token.get_secret_value()  # type: ignore[union-attr]
                           ) as client:
            yield client, {str(angle[0]): 6}


def _call(worker: tuple[openai.OpenAI, dict[str, int]], stream: bool, tools: list[Any],
          tool_choice: Any, **extra: Any) -> Any:
    client, nudge = worker
    return ask(client, stream, WEATHER, tools=tools, tool_choice=tool_choice,
               logit_bias=nudge, **{"max_tokens": 64, **extra})


@STREAMED
def test_a_required_tool_is_called_with_json_arguments(
        worker: tuple[openai.OpenAI, dict[str, int]], stream: bool) -> None:
    """GIVEN a template that renders tools WHEN a chat comes with one tool and tool_choice
    required THEN the answer is that tool's call, no text, its arguments the JSON object the
    tool's schema asks for, streamed or not, as the openai client assembles it."""
    reply = _call(worker, stream, [WEATHER_TOOL], "required")
    assert reply.text == "" and reply.tool_calls, reply
    first = reply.tool_calls[0]
    assert first["name"] == "get_weather"
    assert json.loads(first["arguments"]) == {"city": "Paris"}


@STREAMED
def test_a_named_tool_choice_calls_that_tool_and_no_other(
        worker: tuple[openai.OpenAI, dict[str, int]], stream: bool) -> None:
    """GIVEN two tools WHEN tool_choice names get_time THEN every call is get_time, and the
    prompt is the one with get_time alone (llama-server reads only a string tool_choice and
    would take the object as `auto`, with both tools in the prompt and the model free)."""
    named = {"type": "function", "function": {"name": "get_time"}}
    reply = _call(worker, stream, [WEATHER_TOOL, TIME_TOOL], named,
                  stream_options={"include_usage": True} if stream else None)
    assert reply.tool_calls and {c["name"] for c in reply.tool_calls.values()} == {"get_time"}
    alone = _call(worker, False, [TIME_TOOL], "required")
    both = _call(worker, False, [WEATHER_TOOL, TIME_TOOL], "auto", max_tokens=1)
    assert reply.usage.prompt_tokens == alone.usage.prompt_tokens < both.usage.prompt_tokens


@STREAMED
def test_a_tools_answer_in_the_history_is_rendered_and_answered(
        worker: tuple[openai.OpenAI, dict[str, int]], stream: bool) -> None:
    """GIVEN the call and the tool's answer in the history WHEN the chat goes on with
    tool_choice none THEN the model answers in text, over a prompt that holds both turns."""
    client, _ = worker
    history = [*WEATHER,
               {"role": "assistant", "content": None, "tool_calls": [{
                   "id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"}]
    usage = {"stream_options": {"include_usage": True}} if stream else {}
    reply = ask(client, stream, history, tools=[WEATHER_TOOL], tool_choice="none",
                max_tokens=16, **usage)
    asked = ask(client, stream, WEATHER, tools=[WEATHER_TOOL], tool_choice="none",
                max_tokens=1, **usage)
    assert reply.text and not reply.tool_calls
    # The call and the answer add their own tokens: `{"name": ...}` and "Sunny, 24 C".
    assert reply.usage.prompt_tokens >= asked.usage.prompt_tokens + 20


@pytest.mark.parametrize("tool_choice", [
    {"type": "function", "function": {"name": "get_time"}},
    {"type": "function", "function": {}},
    {"type": "allowed_tools"},
    "sometimes",
], ids=["not-among-tools", "no-name", "other-type", "unknown-word"])
def test_a_tool_choice_that_names_no_tool_is_refused_by_name(
        worker: tuple[openai.OpenAI, dict[str, int]], tool_choice: Any) -> None:
    """GIVEN one tool WHEN tool_choice names a function not among the tools, or is none of
    the forms THEN 400 naming tool_choice, never an answer that ignored it."""
    with pytest.raises(openai.BadRequestError) as caught:
        _call(worker, False, [WEATHER_TOOL], tool_choice)
    assert caught.value.param == "tool_choice"


@STREAMED
def test_parallel_tool_calls_false_gives_one_call_and_ends_there(
        worker: tuple[openai.OpenAI, dict[str, int]], stream: bool) -> None:
    """GIVEN parallel_tool_calls false WHEN the model goes on to a second call THEN the answer
    is the first call alone, ended with finish_reason tool_calls as soon as the second began,
    with its usage (llama-server's parser for this template takes any number of calls, and
    the model here writes a second until max_tokens: two calls and finish length)."""
    usage = {"stream_options": {"include_usage": True}} if stream else {}
    many = _call(worker, stream, [WEATHER_TOOL], "required", **usage)
    assert len(many.tool_calls) == 2 and many.finish == "length"
    reply = _call(worker, stream, [WEATHER_TOOL], "required", parallel_tool_calls=False,
                  **usage)
    assert reply.finish == "tool_calls", reply
    assert list(reply.tool_calls) == [0]
    assert json.loads(reply.tool_calls[0]["arguments"]) == {"city": "Paris"}
    assert reply.usage.prompt_tokens == many.usage.prompt_tokens
    assert 0 < reply.usage.completion_tokens < many.usage.completion_tokens
