"""The endpoints: OpenAI's, and the platform's own `/ai/*` shapes, over the fallback engine."""

from __future__ import annotations

import base64
import json
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from router._backends import BackendConfig, BackendName
from router._config import Settings
from router._deadline import Deadline
from router._errors import AnswerTooLarge, BackendProtocolError, ResponseTooLarge
from router._fallback import Call, FallbackEngine, Outcome
from router._http_types import HttpRequest, HttpResponse
from router._policy import Decision, Policy
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
from router._sse import completion_to_sse
from router._stream_out import STREAMING, relay
from router._streaming import StreamFacts, StreamRun

# DigitalOcean cuts web responses at 1 MB; refuse cleanly instead of being cut.
MAX_RESPONSE_BYTES = 1_000_000
# What SSE framing and our headers add to a completion's JSON, at most.
FRAMING_BYTES = 4_096


def require_fits(payload: dict[str, Any], backend: BackendName) -> None:
    """An answer too large for the platform is the backend's failure: fall back."""
    size = len(json.dumps(payload, separators=(",", ":")))
    if size > MAX_RESPONSE_BYTES - FRAMING_BYTES:
        raise ResponseTooLarge(f"{backend}: answer of {size} bytes is over the platform's limit",
                               backend=backend)


def require_choices(payload: dict[str, Any], backend: BackendName) -> None:
    """A chat completion must carry a message with string content."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendProtocolError(f"{backend}: answer has no choices", backend=backend)
    message = choices[0].get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str | None):
        raise BackendProtocolError(f"{backend}: answer has no message", backend=backend)
    require_fits(payload, backend)


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
    require_fits(payload, backend)


def outcome_headers(outcome: Outcome, decision: Decision | None) -> dict[str, str]:
    """`X-Chat-Backend`, `X-Chat-Fallback` and the routing decision."""
    headers = {"x-chat-backend": outcome.backend, "x-chat-attempts": str(outcome.attempts)}
    if outcome.fallback:
        headers["x-chat-fallback"] = outcome.fallback
    if decision is not None:
        headers["x-chat-route"] = decision.target
        headers["x-chat-route-reason"] = decision.reason
    return headers


def _b64_floats(vector: list[float]) -> str:
    """OpenAI's base64 embedding encoding: little-endian float32, base64."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _json(status: int, data: Any, headers: dict[str, str]) -> HttpResponse:
    response = HttpResponse.json(status, data, headers)
    if len(response.body) > MAX_RESPONSE_BYTES:
        raise AnswerTooLarge("the answer would exceed the platform's 1 MB limit")
    return response


def _counted(response: HttpResponse, outcome: Outcome) -> HttpResponse:
    # The backend's token counts, for the observer (router/_telemetry.py); never sent.
    usage = outcome.payload.get("usage")
    response.usage = usage if isinstance(usage, dict) else None
    return response


@dataclass(frozen=True, slots=True)
class Plan:
    """What a chat request will try: the policy's decision, the backend order, the bodies, the
    caller's GPU budget (asked before every Space attempt), and the reason when the worker
    answers on purpose (`off_hours`)."""

    decision: Decision
    order: list[BackendName]
    body_for: Callable[[BackendConfig], dict[str, Any]]
    budget: SpaceBudget
    on_purpose: str | None


class Endpoints:
    """Request adapters: validate, decide, run through the engine, shape the answer."""

    def __init__(self, settings: Settings, engine: FallbackEngine, policy: Policy,
                 quotas: Quotas) -> None:
        self.settings = settings
        self.engine = engine
        self.policy = policy
        self.quotas = quotas
        self.has_space = "space" in engine.backends
        # Outside WARM_SCHEDULE with OFF_HOURS=fallback, the Space is left to sleep.
        self.space_hours = SpaceHours(settings)

    def _order(self, first: BackendName) -> list[BackendName]:
        if not self.has_space or not self.space_hours.space_allowed():
            return ["worker"]
        return ["space", "worker"] if first == "space" else ["worker", "space"]

    def _plan(self, request: ChatRequest, subject: str) -> Plan:
        check_messages(request.messages, self.settings)
        max_tokens = clamp_tokens(request.wanted_tokens(), self.settings)
        decision = self.policy.decide(request.model, request.messages, request.wanted_tokens())

        def body_for(config: BackendConfig) -> dict[str, Any]:
            return request.upstream_body(config.model, max_tokens)

        order = self._order(decision.target)
        # Answered by the worker on purpose: the Space sleeps off hours. (Over the GPU budget
        # the engine skips the Space itself, on every path that would reach it: `quota`.)
        on_purpose = decision.target == "space" and order == ["worker"] and self.has_space
        return Plan(decision, order, body_for, self.quotas.budget(subject),
                    "off_hours" if on_purpose else None)

    async def _chat(self, request: ChatRequest, subject: str, deadline: Deadline
                    ) -> tuple[Outcome, Decision]:
        plan = self._plan(request, subject)
        decision, body_for = plan.decision, plan.body_for
        call = Call("POST", "/v1/chat/completions", body_for, idempotent=False,
                    check=require_choices, stream=True)
        outcome = await self.engine.run(plan.order, call, deadline, plan.budget)
        if plan.on_purpose and not outcome.fallback:
            outcome = replace(outcome, fallback=plan.on_purpose)
        return outcome, decision

    async def _chat_stream(self, request: ChatRequest, subject: str, deadline: Deadline
                           ) -> HttpResponse:
        plan = self._plan(request, subject)
        decision = plan.decision
        facts = StreamFacts(route=decision.target)
        run = StreamRun(self.engine, plan.order, plan.body_for, deadline, facts, plan.budget)
        chunks = run.chunks()
        first = await anext(chunks)  # a failure before any chunk is an ordinary error answer
        if plan.on_purpose and not facts.fallback:
            facts.fallback = plan.on_purpose
        headers = {"x-chat-backend": facts.backend, "x-chat-attempts": str(facts.attempts),
                   "x-chat-route": decision.target, "x-chat-route-reason": decision.reason}
        if facts.fallback:
            headers["x-chat-fallback"] = facts.fallback
        return HttpResponse(200, "", {**headers, "content-type": "text/event-stream",
                                      "cache-control": "no-cache"},
                            stream=relay(first, chunks, facts, include_usage=bool(
                                (request.stream_options or {}).get("include_usage"))),
                            facts=facts)

    async def chat_completions(self, request: HttpRequest, deadline: Deadline) -> HttpResponse:
        """POST /v1/chat/completions, streamed (buffered SSE) or not."""
        chat = validate(ChatRequest, parse_json(request.body))
        check_fields(chat)
        if chat.stream and STREAMING.get():
            # The service streams for real and no platform cuts it: its own, longer deadline.
            stream_deadline = deadline.stretched_to(self.settings.stream_deadline_ms / 1000.0)
            return await self._chat_stream(chat, request.subject, stream_deadline)
        outcome, decision = await self._chat(chat, request.subject, deadline)
        headers = outcome_headers(outcome, decision)
        if not chat.stream:
            return _counted(_json(200, outcome.payload, headers), outcome)
        include_usage = bool((chat.stream_options or {}).get("include_usage"))
        body = completion_to_sse(outcome.payload, include_usage=include_usage)
        if len(body) > MAX_RESPONSE_BYTES:  # the same 1 MB cap as every JSON answer
            raise AnswerTooLarge("the answer would exceed the platform's 1 MB limit")
        return _counted(HttpResponse(200, body, {**headers, "content-type": "text/event-stream",
                                                 "cache-control": "no-cache"}), outcome)

    async def _embed(self, inputs: list[str], deadline: Deadline) -> Outcome:
        def body_for(config: BackendConfig) -> dict[str, Any]:
            return {"model": config.model, "input": inputs}

        def check(payload: dict[str, Any], backend: BackendName) -> None:
            require_embeddings(payload, backend, len(inputs))

        call = Call("POST", "/v1/embeddings", body_for, idempotent=True, check=check)
        # Only the worker serves embeddings: the Space runs the LLM alone.
        return await self.engine.run(["worker"], call, deadline)

    async def embeddings(self, request: HttpRequest, deadline: Deadline) -> HttpResponse:
        """POST /v1/embeddings."""
        body = validate(EmbeddingsRequest, parse_json(request.body))
        outcome = await self._embed(check_inputs(body.input, self.settings), deadline)
        payload = outcome.payload
        if body.encoding_format == "base64":
            payload = {**payload, "data": [{**item, "embedding": _b64_floats(item["embedding"])}
                                           for item in payload["data"]]}
        return _json(200, payload, outcome_headers(outcome, None))

    async def models(self, request: HttpRequest, deadline: Deadline) -> HttpResponse:
        """GET /v1/models: every name a caller may send, and what serves it."""
        served = {"worker": "worker", "space": "space" if self.has_space else "worker"}
        data = [{"id": "auto", "object": "model", "created": 0, "owned_by": "chat-router",
                 "served_by": "policy"}]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": "chat-router",
                  "served_by": served[target]}
                 for name, target in sorted(self.policy.known_models().items())]
        return _json(200, {"object": "list", "data": data}, {})

    async def _ai_chat(self, messages: list[ChatMessage], system_prompt: str | None,
                       max_length: int | None, temperature: float | None, model: str,
                       subject: str, deadline: Deadline) -> tuple[str, Outcome, Decision]:
        if system_prompt and not any(m.role == "system" for m in messages):
            messages = [ChatMessage(role="system", content=system_prompt), *messages]
        chat = ChatRequest(model=model, messages=messages, max_tokens=max_length,
                           temperature=temperature)
        outcome, decision = await self._chat(chat, subject, deadline)
        content = outcome.payload["choices"][0]["message"].get("content") or ""
        return content, outcome, decision

    async def ai_chat(self, request: HttpRequest, deadline: Deadline) -> HttpResponse:
        """POST /ai/chat: `{messages, max_length, temperature, system_prompt}`."""
        started = time.monotonic()
        body = validate(AiChatRequest, parse_json(request.body))
        text, outcome, decision = await self._ai_chat(body.messages, body.system_prompt,
                                                      body.max_length, body.temperature,
                                                      body.model, request.subject, deadline)
        return _counted(_json(200, {"response": text, **self._meta(outcome, started)},
                              outcome_headers(outcome, decision)), outcome)

    async def ai_generate(self, request: HttpRequest, deadline: Deadline) -> HttpResponse:
        """POST /ai/generate: `{prompt, max_length, temperature, system_prompt}`."""
        started = time.monotonic()
        body = validate(AiGenerateRequest, parse_json(request.body))
        messages = [ChatMessage(role="user", content=body.prompt)]
        text, outcome, decision = await self._ai_chat(messages, body.system_prompt,
                                                      body.max_length, body.temperature,
                                                      body.model, request.subject, deadline)
        return _counted(_json(200, {"text": text, **self._meta(outcome, started)},
                              outcome_headers(outcome, decision)), outcome)

    async def ai_embeddings(self, request: HttpRequest, deadline: Deadline) -> HttpResponse:
        """POST /ai/embeddings: `{text}` -> `{embedding, dimensions, method}`."""
        body = validate(AiEmbeddingsRequest, parse_json(request.body))
        outcome = await self._embed(check_inputs(body.text, self.settings), deadline)
        vectors = [item["embedding"] for item in outcome.payload["data"]]
        embedding = vectors[0] if isinstance(body.text, str) else vectors
        return _json(200, {"embedding": embedding, "dimensions": len(vectors[0]),
                           "method": outcome.backend},
                     outcome_headers(outcome, None))

    @staticmethod
    def _meta(outcome: Outcome, started: float) -> dict[str, Any]:
        return {"method": outcome.backend, "model": outcome.payload.get("model", ""),
                "fallback": outcome.fallback,
                "latency_ms": round((time.monotonic() - started) * 1000.0, 1)}
