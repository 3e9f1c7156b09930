"""The real `main` with DigitalOcean raw events, against OpenAI-style servers on loopback."""

from __future__ import annotations

import base64
import json
import logging
import time

from router._do_event import FunctionContext
from tests.conftest import SPACE_TOKEN, WORKER_TOKEN, load_event, with_body
from tests.fakes.openai_backend import FakeBackend


def ctx(ms: int = 28_000) -> FunctionContext:
    return FunctionContext.with_timeout(ms)


def test_chat_small_goes_to_worker_with_token(main, worker: FakeBackend, space: FakeBackend):
    """GIVEN both backends up WHEN a short chat arrives THEN the worker answers, with its token."""
    result = main(load_event("chat_completions"), ctx())
    assert result["statusCode"] == 200
    body = json.loads(result["body"])
    assert body["choices"][0]["message"]["content"] == "worker: hi there"
    assert result["headers"]["x-chat-backend"] == "worker"
    assert result["headers"]["x-chat-route-reason"] == "default"
    assert "x-chat-fallback" not in result["headers"]
    assert worker.seen[-1].headers["authorization"] == f"Bearer {WORKER_TOKEN}"
    assert space.generation_requests() == 0


def test_base64_body_is_decoded(main, worker: FakeBackend):
    """GIVEN a base64-flagged body WHEN handled THEN it is decoded like a plain one."""
    result = main(load_event("chat_completions_base64"), ctx())
    assert result["statusCode"] == 200
    assert json.loads(result["body"])["choices"][0]["message"]["content"] == "worker: hi there"


def test_llm_goes_to_space_with_both_tokens(main, space: FakeBackend):
    """GIVEN `model: llm` WHEN handled THEN the Space answers; the app and HF tokens are sent."""
    result = main(load_event("chat_completions_llm"), ctx())
    assert result["statusCode"] == 200
    assert result["headers"]["x-chat-backend"] == "space"
    seen = space.seen[-1]
    assert seen.headers["authorization"] == f"Bearer {SPACE_TOKEN}"
    assert seen.headers["x-hf-authorization"].startswith("Bearer hf_")
    assert seen.body is not None and seen.body["max_tokens"] == 64


def test_auto_routes_generation_tasks_to_space(main, space: FakeBackend):
    """GIVEN `auto` and a drafting task WHEN handled THEN the Space answers, reason task:draft."""
    event = with_body("chat_completions", {"messages": [
        {"role": "user", "content": "Please draft a reply to this client"}]})
    result = main(event, ctx())
    assert result["headers"]["x-chat-backend"] == "space"
    assert result["headers"]["x-chat-route-reason"] == "task:draft"


def test_stream_answers_buffered_sse(main):
    """GIVEN `stream: true` WHEN handled THEN the body is an SSE stream ending in [DONE]."""
    result = main(load_event("chat_completions_stream"), ctx())
    assert result["headers"]["content-type"] == "text/event-stream"
    events = [line[6:] for line in result["body"].split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "worker: hi there"
    assert chunks[-1]["usage"]["total_tokens"] == 5


def test_embeddings_and_models_and_health(main, worker: FakeBackend, space: FakeBackend):
    """GIVEN the fakes WHEN embeddings, models and health are asked THEN each has its shape."""
    emb = json.loads(main(load_event("embeddings"), ctx())["body"])
    assert [d["index"] for d in emb["data"]] == [0, 1]
    models = json.loads(main(load_event("models"), ctx())["body"])
    ids = {m["id"]: m["served_by"] for m in models["data"]}
    assert ids["auto"] == "policy" and ids["small"] == "worker" and ids["llm"] == "space"
    before = len(worker.seen) + len(space.seen)
    health = main(load_event("health"), ctx())
    assert health["statusCode"] == 200
    assert json.loads(health["body"])["status"] == "ok"
    assert len(worker.seen) + len(space.seen) == before  # /health touches no backend


def test_ai_endpoints(main, worker: FakeBackend, space: FakeBackend):
    """GIVEN the platform's own shapes WHEN called THEN they answer in those shapes."""
    started = time.monotonic()
    chat = json.loads(main(load_event("ai_chat"), ctx())["body"])
    took_ms = (time.monotonic() - started) * 1000
    assert chat["response"] == "worker: hello" and chat["method"] == "worker"
    # The router's own time for the answer, in ms: a backend round trip took some, and it is
    # within what the call took from here (not seconds, not a stale figure).
    assert 0 < chat["latency_ms"] <= took_ms
    sent = worker.seen[-1].body
    assert sent is not None
    assert sent["messages"][0] == {"role": "system",
                                                    "content": "You help freelancers."}
    gen = json.loads(main(load_event("ai_generate"), ctx())["body"])
    assert gen["method"] == "space" and gen["text"].startswith("space: Draft a cover letter")
    emb = json.loads(main(load_event("ai_embeddings"), ctx())["body"])
    assert emb["dimensions"] == 8 and len(emb["embedding"]) == 8 and emb["method"] == "worker"


def test_bad_input_gets_documented_errors(main, worker: FakeBackend):
    """GIVEN broken requests WHEN handled THEN each gets its JSON error, no backend call."""
    cases = [
        (load_event("chat_completions", body="{not json"), 400, "invalid_json"),
        (load_event("chat_completions", body="[]"), 400, "invalid_json"),
        (load_event("chat_completions", body="!!!", isBase64Encoded=True), 400,
         "invalid_base64"),
        (with_body("chat_completions", {"messages": []}), 400, "invalid_request"),
        (with_body("chat_completions", {"model": "gpt-99", "messages": [
            {"role": "user", "content": "x"}]}), 400, "model_not_found"),
        (with_body("chat_completions", {"messages": [{"role": "user", "content": "x"}],
                                        "max_tokens": 999_999}), 400, "max_tokens_too_large"),
        (with_body("chat_completions", {"messages": [{"role": "user", "content": "x"}] * 65}),
         400, "too_many_messages"),
        (load_event("chat_completions", body="x" * 300_000), 413, "payload_too_large"),
        (load_event("health", path="/nope"), 404, "not_found"),
        (load_event("health", path="/v1/chat/completions"), 405, "method_not_allowed"),
        (load_event("chat_completions", headers={"x-chat-deadline-ms": "soon"}), 400,
         "bad_header"),
    ]
    for event, status, code in cases:
        result = main(event, ctx())
        assert result["statusCode"] == status, (code, result)
        error = json.loads(result["body"])["error"]
        assert error["code"] == code and error["message"] and error["type"]
        assert result["headers"]["content-type"] == "application/json"
    assert worker.generation_requests() == 0


def test_missing_config_is_a_clear_503(make_main, monkeypatch, caplog):
    """GIVEN no WORKER_URL WHEN called THEN 503 misconfigured naming the variable, no crash;
    its X-Request-Id is on its log line, as on any refusal, so a caller's report finds it."""
    monkeypatch.delenv("WORKER_URL", raising=False)
    caplog.set_level(logging.INFO, logger="router.request")
    result = make_main({})(load_event("health"), ctx())
    assert result["statusCode"] == 503
    assert "WORKER_URL" in json.loads(result["body"])["error"]["message"]
    request_id = result["headers"]["x-request-id"]
    assert len(request_id) == 16
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.name == "router.request"]
    assert [line.get("request_id") for line in lines] == [request_id]


def test_warmup_marker_answers_without_backends(main, worker: FakeBackend, space: FakeBackend):
    """GIVEN the warm-up marker header WHEN called THEN 200 at once, no backend touched."""
    event = load_event("chat_completions", headers={"x-chat-warmup": "1"})
    result = main(event, ctx())
    assert result["statusCode"] == 200 and json.loads(result["body"]) == {"warm": True}
    assert worker.seen == [] and space.seen == []


def test_raw_event_with_binary_body(main):
    """GIVEN a base64 body that is not UTF-8 JSON WHEN handled THEN a 400, not a crash."""
    event = load_event("chat_completions", body=base64.b64encode(b"\xff\xfe\x00").decode(),
                       isBase64Encoded=True)
    assert main(event, ctx())["statusCode"] == 400


def test_the_log_line_and_the_headers_render_one_record(main, space: FakeBackend, caplog):
    """GIVEN a sleeping Space WHEN an `llm` chat falls back to the worker THEN the request's one
    log line and its `X-Chat-*` headers tell the same facts, both rendered from the one record:
    the route, the backend, the fallback, and the attempts (a number in the log line)."""

    space.mode = "sleeping"
    caplog.set_level(logging.INFO, logger="router.request")
    result = main(load_event("chat_completions_llm"), ctx())
    lines = [getattr(r, "fields", {}) for r in caplog.records
             if r.name == "router.request" and r.getMessage() == "request"]
    assert len(lines) == 1
    line, headers = lines[0], result["headers"]
    assert line["request_id"] == headers["x-request-id"]
    assert (line["route"], line["route_reason"], line["backend"], line["fallback"]) == (
        headers["x-chat-route"], headers["x-chat-route-reason"], headers["x-chat-backend"],
        headers["x-chat-fallback"]) == ("space", "llm", "worker", "space_sleeping")
    assert line["attempts"] == int(headers["x-chat-attempts"]) == 2
    assert (line["status"], line["code"]) == (200, None)
