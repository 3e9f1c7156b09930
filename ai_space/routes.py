"""The HTTP endpoints: health, models, chat completions and embeddings."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2.exceptions import TemplateError, TemplateSyntaxError
from starlette.concurrency import run_in_threadpool

from ai_space import schema
from ai_space.config import Settings
from ai_space.errors import ERROR_RESPONSES, BadRequest, NotFound, NotReady
from ai_space.host import ModelHost
from ai_space.prefill import continues_final
from ai_space.protocols import ChatFormat, Engine
from ai_space.request_fields import check_dimensions, check_embedding_fields, check_fields
from ai_space.sse import ChatStream, collect

log = logging.getLogger("ai_space")
router = APIRouter(responses=ERROR_RESPONSES)
_STARTED = int(time.time())


def _host(request: Request) -> ModelHost:
    host: ModelHost = request.app.state.host
    return host


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _ready(host: ModelHost) -> tuple[ChatFormat, Engine]:
    # ModelHost.status is "error" when the model failed to load or its decode loop has died.
    if host.status == "error":
        raise NotReady("model failed to load or stopped; see the server log",
                       code="model_error", retry_after=60)
    if host.chat is None or host.batcher is None or host.status != "ready":
        raise NotReady("model is loading")
    return host.chat, host.batcher


@router.get("/health", responses={503: {"description": "not ready: the health body, with "
                                                    "Retry-After while loading"}})
async def health(request: Request) -> JSONResponse:
    """Cheap readiness: 200 when ready, 503 (Retry-After while loading) otherwise."""
    host, settings = _host(request), _settings(request)
    status = host.status
    body = {"status": status, "model": settings.model_name,
            "embedding_model": settings.embedding_model_name, "device": str(host.device),
            "engine": host.engine, "engine_reason": host.engine_reason}
    if status == "ready":
        return JSONResponse(body)
    headers = {"Retry-After": str(NotReady.retry_after)} if status == "loading" else None
    return JSONResponse(body, status_code=503, headers=headers)


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    """The chat model and, when configured, the embedding model."""
    settings = _settings(request)
    names = [settings.model_name]
    if settings.embedding_model_name is not None:
        names.append(settings.embedding_model_name)
    return JSONResponse({"object": "list",
                         "data": [schema.model_card(name, _STARTED) for name in names]})


def _prompt(chat: ChatFormat, body: schema.ChatCompletionRequest) -> list[int]:
    turns = [m.as_template_turn() for m in body.messages]
    try:
        return chat.prompt_ids(turns)
    except TemplateSyntaxError:
        raise  # the template itself is broken: a server error (500), details in the log
    except TemplateError as exc:
        # A template refuses what it cannot format (`raise_exception`, e.g. no system role):
        # that is the caller's input, so a 400 with the template's own words. Anything else
        # is ours and becomes a 500 without its text (ai_space/errors.py).
        raise BadRequest(f"messages do not fit the model's chat template: {exc.message}",
                         code="invalid_messages") from None
    except ValueError as exc:
        if not continues_final(turns):
            raise  # not the caller's prefill: ours, a 500 without its text
        # A trailing assistant message that the template does not reproduce cannot be
        # continued (transformers raises the same for continue_final_message).
        raise BadRequest(f"the final assistant message cannot be continued: {exc}",
                         code="invalid_messages") from None


@router.post("/v1/chat/completions", responses={200: {
    "description": "the completion (JSON), or with `stream: true` its chunks (SSE)",
    "content": {"application/json": {}, "text/event-stream": {}}}})
async def chat_completions(body: schema.ChatCompletionRequest, request: Request) -> Response:
    """OpenAI chat completions, streamed as SSE or answered whole."""
    settings, host = _settings(request), _host(request)
    if host.engines is not None:
        if host.status != "ready" or host.engines.chat is None:
            _ready(host)
            raise NotReady("model is loading")
        check_fields(body, host.engine)
        return await host.engines.chat.respond(body, request)
    chat, batcher = _ready(host)
    check_fields(body, host.engine)
    prompt_ids = await run_in_threadpool(_prompt, chat, body)
    if len(prompt_ids) > settings.max_input_tokens:
        raise BadRequest(f"prompt is {len(prompt_ids)} tokens; the limit is "
                         f"{settings.max_input_tokens}", code="context_length_exceeded")
    stream = ChatStream.open(batcher, prompt_ids, body, settings)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream.sse(include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    return JSONResponse(await collect(stream, request))


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encode(vector: np.ndarray[Any, Any], fmt: str) -> list[float] | str:
    if fmt == "base64":
        # The openai client asks for base64 by default: little-endian float32 bytes.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


@router.post("/v1/embeddings")
async def embeddings(body: schema.EmbeddingRequest, request: Request) -> JSONResponse:
    """OpenAI embeddings: mean-pooled, normalised sentence vectors."""
    host, settings = _host(request), _settings(request)
    if settings.embedding_model_name is None:
        raise NotFound("no embedding model is configured on this server",
                       code="model_not_found")
    if host.engines is None:
        _ready(host)
    elif host.status != "ready" or host.engines.embeddings is None:
        _ready(host)
        raise NotReady("embedding model is loading")
    check_embedding_fields(body)
    texts = body.texts()
    if not texts or any(not t for t in texts):
        raise BadRequest("input must be a non-empty string or a list of non-empty strings")
    if not all(_is_text(t) for t in texts):
        # JSON can escape a lone surrogate ("\ud800"); the tokenizer raises TypeError on it.
        raise BadRequest("input holds an unpaired surrogate (not valid Unicode)")
    if len(texts) > settings.max_embedding_inputs:
        raise BadRequest(f"at most {settings.max_embedding_inputs} inputs per request")
    started = time.perf_counter()
    if host.engines is not None and host.engines.embeddings is not None:
        vectors, tokens = await host.engines.embeddings.embed(texts)
    else:
        embedder = host.embedder
        if embedder is None:
            raise NotReady("embedding model is loading")
        vectors = np.asarray(await run_in_threadpool(embedder.embed, texts))
        tokens = await run_in_threadpool(embedder.count_tokens, texts)
    check_dimensions(body, int(vectors.shape[1]))  # the width is known once a vector is
    host.metrics.tokens.labels("embedding").inc(tokens)  # beside generations' in and out
    log.info("embeddings inputs=%d tokens=%d latency_ms=%.0f", len(texts), tokens,
             (time.perf_counter() - started) * 1000)
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": settings.embedding_model_name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

