"""The front's chat route on llama-server: check, admit, relay, meter.

The request is validated and checked field by field here (request_fields.py), then passed to
the chat engine, always streamed: a hang-up then reaches llama-server at its next token (it
checks the connection before each write), instead of at its 1 s poll of a waiting request,
so the slot is freed within a token's time. A non-streamed answer is assembled here from the
chunks. Admission (MAX_CONCURRENCY running plus MAX_QUEUE waiting, then 429) is the front's:
llama-server would queue without bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ai_space import schema
from ai_space.config import Settings
from ai_space.errors import APIError, BadRequest, QueueFull, Unsupported, error_body
from ai_space.generation import Finished
from ai_space.llama.assemble import Answer, PrefillCut
from ai_space.llama.client import EngineClient, EngineDown, engine_error
from ai_space.metrics import ServerMetrics
from ai_space.request_fields import BOOKKEEPING
from ai_space.sse import sse_event

log = logging.getLogger("ai_space")

# Tokens are at most the rendered prompt's bytes (each token covers at least one byte); the
# template adds its own text around the messages. Under this bound no count is needed.
_TEMPLATE_BYTES = 1024
# A chunk holding one of these is parsed (the end, the token counts, an error, the timings
# dropped); any other after the first text is relayed as it came.
_MARKS = ('"finish_reason":"', '"usage"', '"error"', '"timings"')


class LlamaChat:
    """Chat completions relayed to the chat engine."""

    def __init__(self, settings: Settings, engine: EngineClient, metrics: ServerMetrics,
                 n_vocab: int, tools: bool) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.n_vocab = n_vocab
        self.tools = tools  # whether the model's chat template renders tools
        self.active = 0  # admitted and not yet ended: what MAX_QUEUE counts

    def check_tools(self, body: schema.ChatCompletionRequest) -> None:
        """Refuse tools by name where the model's template has no place for them.

        llama-server then renders the chat without the tools and answers in text: a 200 that
        quietly did without them, which the field table promises never to give.
        """
        if self.tools:
            return
        why = "this model's chat template has no tool calling"
        extra = body.model_extra or {}
        if extra.get("tools"):
            raise Unsupported("tools", why)
        if extra.get("tool_choice") not in (None, "none", "auto"):
            raise Unsupported("tool_choice", why)
        for i, message in enumerate(body.messages):
            if message.role == "tool":
                raise Unsupported(f"messages[{i}].role", why)
            if (message.model_extra or {}).get("tool_calls"):
                raise Unsupported(f"messages[{i}].tool_calls", why)

    def payload(self, body: schema.ChatCompletionRequest) -> dict[str, Any]:
        """What llama-server gets: the request's own fields, with our caps and always a stream."""
        data = body.model_dump(mode="json", exclude_unset=True, exclude_none=True,
                               by_alias=True)
        for name in BOOKKEEPING - {"parallel_tool_calls"}:
            data.pop(name, None)
        for name in ("model", "n", "max_completion_tokens", "stream_options"):
            data.pop(name, None)
        asked = body.max_completion_tokens or body.max_tokens or self.settings.max_tokens
        data["max_tokens"] = min(asked, self.settings.max_tokens)
        data["stream"] = True
        data["stream_options"] = {"include_usage": True}
        for message in data["messages"]:
            if message.get("role") == "developer":
                message["role"] = "system"
        if "tool_choice" in data:
            tools, data["tool_choice"] = _tool_choice(data["tool_choice"],
                                                      data.get("tools") or [])
            if tools:
                data["tools"] = tools
        if _one_call(data):
            # The relay ends the answer at the first call; the engine's running counts then
            # give its usage.
            data["timings_per_token"] = True
        for key in (body.logit_bias or {}):
            if int(key) >= self.n_vocab:
                raise BadRequest(f"logit_bias names token {key}, outside the model's "
                                 f"{self.n_vocab}-token vocabulary", param="logit_bias")
        return data

    async def check_prompt(self, data: dict[str, Any]) -> None:
        """A 400 when the prompt, after the template, is over MAX_INPUT_TOKENS."""
        limit = self.settings.max_input_tokens
        size = len(json.dumps(data["messages"], ensure_ascii=False).encode())
        if "tools" not in data and size + _TEMPLATE_BYTES <= limit:
            return
        template: dict[str, Any] = {k: data[k] for k in ("messages", "tools") if k in data}
        rendered = await self.engine.post("/apply-template", template)
        tokens = await self.engine.post("/tokenize", {"content": rendered["prompt"],
                                                      "add_special": True,
                                                      "parse_special": True})
        count = len(tokens["tokens"])
        if count > limit:
            raise BadRequest(f"prompt is {count} tokens; the limit is {limit}",
                             code="context_length_exceeded")

    async def respond(self, body: schema.ChatCompletionRequest, request: Request) -> Response:
        """The answer: an SSE stream relayed chunk by chunk, or one assembled JSON body."""
        self.check_tools(body)
        data = self.payload(body)
        await self.check_prompt(data)
        if self.active >= self.settings.max_concurrency + self.settings.max_queue:
            raise QueueFull("server is busy: all generation slots and queue places are taken")
        self.active += 1
        try:
            upstream = await self._open(data)
        except BaseException:
            self.active -= 1
            raise
        answer = Answer(one_call=_one_call(data))
        last = body.messages[-1]
        if last.role == "assistant" and last.text() and not (last.model_extra or {}).get(
                "tool_calls"):
            answer.cut = PrefillCut(last.text())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            relay = self._relay(upstream, answer, usage)
            # Started here, so that if the response is dropped before it is sent (the caller
            # gone), collecting the generator closes it: its `finally` frees the slot.
            first = await anext(relay)
            return StreamingResponse(_chain(first, relay), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        return JSONResponse(await self._collect(upstream, answer, request))

    async def _open(self, data: dict[str, Any]) -> httpx.Response:
        self.engine.check_alive()
        client = self.engine.client()
        try:
            upstream = await client.send(
                client.build_request("POST", "/v1/chat/completions", json=data,
                                     headers=self.engine.headers()), stream=True)
        except httpx.TransportError:
            raise EngineDown("the chat engine is restarting", retry_after=5) from None
        if upstream.status_code != 200:
            raw = await upstream.aread()
            await upstream.aclose()
            error = engine_error(upstream.status_code, raw)
            if "response_format" in data and error.status == 400 and "schema" in error.message:
                raise BadRequest(error.message, code="invalid_json_schema",
                                 param="response_format")
            raise error
        return upstream

    async def _events(self, upstream: httpx.Response, answer: Answer, *, relay: bool = False
                      ) -> AsyncIterator[dict[str, Any] | str]:
        """The engine's chunks, parsed and noted; an error event or a lost engine raises.

        Relaying a stream, a chunk that only carries more text after the first is passed on
        as the engine wrote it (a str), unparsed: the metrics need the first text, the end
        and the usage, and the caller needs nothing changed in the rest.
        """
        cut = answer.cut
        try:
            async for line in upstream.aiter_lines():
                if not line.startswith("data: "):
                    continue  # blank separators and ": ping" keep-alives
                text = line[6:]
                if text == "[DONE]":
                    return
                if relay and answer.first is not None and cut is None and \
                        not answer.one_call and not any(mark in text for mark in _MARKS):
                    yield text
                    continue
                event = json.loads(text)
                if "error" in event:
                    raise APIError(str(event["error"].get("message", "generation failed")),
                                   code="generation_failed")
                answer.timings = event.pop("timings", None) or answer.timings
                if answer.one_call and answer.one_call_ended(event):
                    for end in answer.end_at_first_call(event):
                        answer.note(end)
                        yield end
                    return
                if cut is not None:
                    for choice in event.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            delta["content"] = cut(delta["content"])
                answer.note(event)
                yield event
        except httpx.TransportError:
            raise APIError("the chat engine stopped while answering",
                           code="generation_failed") from None

    async def _relay(self, upstream: httpx.Response, answer: Answer,
                     include_usage: bool) -> AsyncIterator[bytes]:
        try:
            async for event in self._events(upstream, answer, relay=True):
                if isinstance(event, str) or event.get("choices") or include_usage:
                    yield sse_event(event)
            if answer.finish_reason is None:
                raise APIError("the chat engine stopped while answering",
                               code="generation_failed")
        except APIError as exc:
            answer.failed = True
            # The openai client raises on an `error` event, so the caller sees it.
            yield sse_event(error_body(500, "server_error", exc.message, "generation_failed"))
        except Exception as exc:
            # Anything else cuts the stream: say which, by type only (a message may hold text
            # of the answer), so a cut stream is never logged as the caller's hang-up.
            answer.failed = True
            log.error("chat stream cut by %s", type(exc).__name__)
            raise
        finally:
            with anyio.CancelScope(shield=True):  # a hang-up cancels us: close it anyway
                await upstream.aclose()
            self._done(answer, stream=True)
        yield sse_event("[DONE]")

    async def _collect(self, upstream: httpx.Response, answer: Answer,
                       request: Request) -> dict[str, Any]:
        async def gather() -> None:
            async for _ in self._events(upstream, answer):
                pass

        task = asyncio.ensure_future(gather())
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                log.info("client disconnected; cancelling its generation")
            try:
                await task
            except asyncio.CancelledError:
                answer.hung_up = True
            except APIError:
                answer.failed = True
                raise
        finally:
            watcher.cancel()
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            self._done(answer, stream=False)
        if answer.finish_reason is None:
            answer.failed = True
            raise APIError("the chat engine stopped while answering", code="generation_failed")
        return answer.completion()

    def _done(self, answer: Answer, *, stream: bool) -> None:
        self.active -= 1
        reason = answer.outcome()
        finished = Finished(reason, answer.prompt_tokens, answer.completion_tokens)
        self.metrics.record(answer.started, answer.first, finished)
        log.info("chat stream=%s finish=%s prompt_tokens=%d completion_tokens=%d "
                 "latency_ms=%.0f", stream, reason if reason != "cancelled" else "disconnect",
                 answer.prompt_tokens, answer.completion_tokens,
                 (time.monotonic() - answer.started) * 1000)


def _tool_choice(choice: Any, tools: list[Any]) -> tuple[list[Any], str]:
    """The tools and the string tool_choice llama-server honours for the caller's choice.

    llama-server reads tool_choice only as a string and takes any other type as "auto", so
    a named function would quietly leave the model free: it becomes that one tool, required.
    """
    if choice in ("auto", "none", "required"):
        return tools, choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        named = [tool for tool in tools if isinstance(tool, dict)
                 and (tool.get("function") or {}).get("name") == name]
        if isinstance(name, str) and named:
            return named[:1], "required"
        raise BadRequest(f"tool_choice names function {name[:64]!r}, which is not among tools"
                         if isinstance(name, str) else "tool_choice.function.name is missing",
                         param="tool_choice")
    raise BadRequest('tool_choice is "none", "auto", "required" or '
                     '{"type": "function", "function": {"name": ...}}', param="tool_choice")


def _one_call(data: dict[str, Any]) -> bool:
    # parallel_tool_calls false, where calls may come: llama-server's parser for a template
    # like Qwen 2.5's takes any number of calls whatever the field says.
    return data.get("parallel_tool_calls") is False and bool(data.get("tools")) and \
        data.get("tool_choice") != "none"


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for part in rest:
        yield part


async def _disconnected(request: Request) -> None:
    # The body has been read already, so the next message on the channel is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
