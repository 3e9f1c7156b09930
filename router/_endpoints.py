"""The endpoints: OpenAI's, and the platform's own `/ai/*` shapes, over the one fallback loop.

A chat is one stream through the loop (router/_fallback.py): relayed as it comes where the
edge streams and the caller asked to (`Edge.live_streams`, `stream: true`), collected into one
answer everywhere else (router/_attempts.py says how each behaves after a failure).
"""

from __future__ import annotations

import base64
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router._attempts import Answer, ChatStream, Collected, JsonCall
from router._backends import BackendConfig, BackendName
from router._choice import Route
from router._config import Settings
from router._deployments import by_tier
from router._errors import AnswerTooLarge, BackendProtocolError, ResponseTooLarge
from router._fallback import FallbackEngine
from router._http_types import Exchange, HttpResponse
from router._policy import Policy
from router._quota import Quotas, SpaceBudget
from router._schedule import SpaceHours
from router._schema import (
    AiChatRequest,
    AiEmbeddingsRequest,
    AiGenerateRequest,
    ChatMessage,
    ChatRequest,
    EmbeddingsRequest,
    check_fields,
    check_inputs,
    check_messages,
    clamp_tokens,
    parse_json,
    validate,
)
from router._stream_out import SseWriter, buffered, relay
from router._stream_read import StreamLimits

# DigitalOcean cuts web responses at 1 MB; refuse cleanly instead of being cut.
MAX_RESPONSE_BYTES = 1_000_000
# What SSE framing and our headers add to a completion's JSON, at most.
FRAMING_BYTES = 4_096
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def require_fits(text: str, backend: BackendName) -> None:
    """An answer too large for the platform is the backend's failure: fall back."""
    if len(text) > MAX_RESPONSE_BYTES - FRAMING_BYTES:
        raise ResponseTooLarge(f"{backend}: answer of {len(text)} bytes is over the platform's "
                               "limit", backend=backend)


def require_embeddings(payload: dict[str, Any], backend: BackendName, count: int) -> None:
    """An embeddings answer must carry one vector for each of the `count` inputs."""
    data = payload.get("data")
    if not isinstance(data, list) or not all(
            isinstance(item, dict) and isinstance(item.get("embedding"), list) for item in data):
        raise BackendProtocolError(f"{backend}: answer has no embeddings", backend=backend)
    # Fewer vectors than inputs would lose inputs silently (or crash /ai/embeddings on []).
    if len(data) != count:
        raise BackendProtocolError(f"{backend}: {len(data)} embeddings for {count} inputs",
                                   backend=backend)


def _b64_floats(vector: list[float]) -> str:
    """OpenAI's base64 embedding encoding: little-endian float32, base64."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _fitting(response: HttpResponse) -> HttpResponse:
    if len(response.body) > MAX_RESPONSE_BYTES:  # the same 1 MB cap for every answer
        raise AnswerTooLarge("the answer would exceed the platform's 1 MB limit")
    return response


@dataclass(frozen=True, slots=True)
class Plan:
    """What a chat will try: its route through the deployments, each one's body, and the
    caller's GPU budget (asked before every attempt on the LLM tier)."""

    route: Route
    body_for: Callable[[BackendConfig], dict[str, Any]]
    budget: SpaceBudget


class Endpoints:
    """Request adapters: validate, decide, run through the loop, shape the answer."""

    def __init__(self, settings: Settings, engine: FallbackEngine, policy: Policy,
                 quotas: Quotas) -> None:
        self.settings = settings
        self.engine = engine
        self.policy = policy
        self.quotas = quotas
        tiers = by_tier(settings.deployments)
        self.small, self.llm = tiers["small"], tiers["llm"]
        self.has_space = bool(self.llm)
        # Outside WARM_SCHEDULE with OFF_HOURS=fallback, the Spaces and endpoints are left to
        # sleep (the LLM tier's always-on servers still serve).
        self.space_hours = SpaceHours(settings.warm_schedule, settings.off_hours)
        self.llm_off_hours = tuple(d for d in self.llm if not d.sleeps)
        self.limits = StreamLimits(settings.first_token_timeout_ms / 1000.0,
                                   settings.stream_stall_timeout_ms / 1000.0)

    def _route(self, first: str, llm_hours: bool) -> Route:
        """The tiers in order: the policy's choice (`space`: the LLM tier) first; outside the
        LLM tier's hours (`llm_hours` false), without its Spaces and endpoints."""
        llm = self.llm if llm_hours else self.llm_off_hours
        return Route(self.engine.balancer, (llm, self.small) if first == "space"
                     else (self.small, llm))

    def _plan(self, chat: ChatRequest, ex: Exchange) -> Plan:
        check_messages(chat.messages, self.settings)
        max_tokens = clamp_tokens(chat.wanted_tokens(), self.settings)
        decision = self.policy.decide(chat.model, chat.messages, chat.wanted_tokens())
        ex.record.route, ex.record.route_reason = decision.target, decision.reason
        ex.record.model = chat.model

        def body_for(config: BackendConfig) -> dict[str, Any]:
            return chat.upstream_body(config.model, max_tokens)

        # Answered by the small tier on purpose: the LLM tier sleeps off hours. (Over the GPU
        # budget the loop skips the LLM tier itself, on every path that would reach it:
        # `quota`.)
        llm_hours = self.space_hours.space_allowed()
        if decision.target == "space" and self.llm and not (llm_hours or self.llm_off_hours):
            ex.record.on_purpose = "off_hours"
        return Plan(self._route(decision.target, llm_hours), body_for,
                    self.quotas.budget(ex.subject))

    async def _collect(self, chat: ChatRequest, ex: Exchange) -> Answer:
        plan = self._plan(chat, ex)
        source = Collected(ChatStream(plan.body_for, self.limits, live=False), require_fits)
        return await self.engine.answer(plan.route, source, ex.deadline, ex.record,
                                        plan.budget)

    async def _live(self, chat: ChatRequest, ex: Exchange) -> HttpResponse:
        # The service streams for real and no platform cuts it: its own, longer deadline.
        deadline = ex.deadline.stretched_to(self.settings.stream_deadline_ms / 1000.0)
        plan = self._plan(chat, ex)
        source = ChatStream(plan.body_for, self.limits, live=True)
        chunks = self.engine.run(plan.route, source, deadline, ex.record, plan.budget)
        first = await anext(chunks)  # a failure before any chunk is an ordinary error answer
        ex.record.streamed = True
        return HttpResponse(200, "", dict(SSE_HEADERS),
                            stream=relay(first, chunks, self._writer(chat, ex)))

    @staticmethod
    def _writer(chat: ChatRequest, ex: Exchange) -> SseWriter:
        include_usage = bool((chat.stream_options or {}).get("include_usage"))
        return SseWriter(ex.record, include_usage=include_usage)

    async def chat_completions(self, ex: Exchange) -> HttpResponse:
        """POST /v1/chat/completions: streamed as it comes, or in one body."""
        chat = validate(ChatRequest, parse_json(ex.request.body))
        check_fields(chat)
        if chat.stream and ex.edge.live_streams:
            return await self._live(chat, ex)
        answer = await self._collect(chat, ex)
        if not chat.stream:
            return HttpResponse(200, answer.text, {"content-type": "application/json"})
        return _fitting(HttpResponse(200, buffered(answer.chunks, self._writer(chat, ex)),
                                     dict(SSE_HEADERS)))

    async def _embed(self, inputs: list[str], model: str, ex: Exchange) -> dict[str, Any]:
        # Any name is served by the small tier here; only a name the router knows is recorded
        # (the span's `gen_ai.request.model`): a caller's free text never reaches a trace.
        known = model == "auto" or model in self.policy.known_models()
        ex.record.model = model if known else "other"

        def body_for(config: BackendConfig) -> dict[str, Any]:
            return {"model": config.model, "input": inputs}

        def check(payload: dict[str, Any], backend: BackendName) -> None:
            require_embeddings(payload, backend, len(inputs))

        # Only the small tier serves embeddings: the LLM tier runs the LLM alone.
        source = JsonCall("/v1/embeddings", body_for, check, idempotent=True)
        return await self.engine.answer(Route(self.engine.balancer, (self.small,)), source,
                                        ex.deadline, ex.record)

    async def embeddings(self, ex: Exchange) -> HttpResponse:
        """POST /v1/embeddings."""
        body = validate(EmbeddingsRequest, parse_json(ex.request.body))
        payload = await self._embed(check_inputs(body.input, self.settings), body.model, ex)
        if body.encoding_format == "base64":
            payload = {**payload, "data": [{**item, "embedding": _b64_floats(item["embedding"])}
                                           for item in payload["data"]]}
        return _fitting(HttpResponse.json(200, payload))

    async def models(self, ex: Exchange) -> HttpResponse:
        """GET /v1/models: every name a caller may send, and what serves it."""
        # The deployments that serve each tier, by name (one name: the shorthand's words).
        small = ",".join(d.name for d in self.small)
        served = {"worker": small, "space": ",".join(d.name for d in self.llm) or small}
        data = [{"id": "auto", "object": "model", "created": 0, "owned_by": "chat-router",
                 "served_by": "policy"}]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": "chat-router",
                  "served_by": served[target]}
                 for name, target in sorted(self.policy.known_models().items())]
        return _fitting(HttpResponse.json(200, {"object": "list", "data": data}))

    async def _ai_chat(self, messages: list[ChatMessage], system_prompt: str | None,
                       max_length: int | None, temperature: float | None, model: str,
                       ex: Exchange) -> dict[str, Any]:
        started = time.monotonic()
        if system_prompt and not any(m.role == "system" for m in messages):
            messages = [ChatMessage(role="system", content=system_prompt), *messages]
        chat = ChatRequest(model=model, messages=messages, max_tokens=max_length,
                           temperature=temperature)
        answer = await self._collect(chat, ex)
        return {"text": answer.completion["choices"][0]["message"].get("content") or "",
                "method": ex.record.backend, "model": answer.completion.get("model", ""),
                "fallback": ex.record.fallback,
                "latency_ms": round((time.monotonic() - started) * 1000.0, 1)}

    async def ai_chat(self, ex: Exchange) -> HttpResponse:
        """POST /ai/chat: `{messages, max_length, temperature, system_prompt}`."""
        body = validate(AiChatRequest, parse_json(ex.request.body))
        meta = await self._ai_chat(body.messages, body.system_prompt, body.max_length,
                                   body.temperature, body.model, ex)
        return _fitting(HttpResponse.json(200, {"response": meta.pop("text"), **meta}))

    async def ai_generate(self, ex: Exchange) -> HttpResponse:
        """POST /ai/generate: `{prompt, max_length, temperature, system_prompt}`."""
        body = validate(AiGenerateRequest, parse_json(ex.request.body))
        messages = [ChatMessage(role="user", content=body.prompt)]
        meta = await self._ai_chat(messages, body.system_prompt, body.max_length,
                                   body.temperature, body.model, ex)
        return _fitting(HttpResponse.json(200, {"text": meta.pop("text"), **meta}))

    async def ai_embeddings(self, ex: Exchange) -> HttpResponse:
        """POST /ai/embeddings: `{text}` -> `{embedding, dimensions, method}`."""
        body = validate(AiEmbeddingsRequest, parse_json(ex.request.body))
        # /ai/embeddings names no model: the small tier, the only one that embeds, serves it.
        payload = await self._embed(check_inputs(body.text, self.settings), "small", ex)
        vectors = [item["embedding"] for item in payload["data"]]
        embedding = vectors[0] if isinstance(body.text, str) else vectors
        return _fitting(HttpResponse.json(200, {"embedding": embedding,
                                                "dimensions": len(vectors[0]),
                                                "method": ex.record.backend}))
