"""Who may call, and what never leaks: CORS, API keys, and secrets in answers and logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from router._do_event import FunctionContext
from tests.conftest import SECRETS, load_event
from tests.fakes.hub import FakeHub
from tests.fakes.openai_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "https://app.example.com"


def ctx() -> FunctionContext:
    return FunctionContext.with_timeout(28_000)


def test_cors_preflight_only_for_listed_origins(main):
    """GIVEN CORS_ORIGINS WHEN a preflight comes from it, or elsewhere THEN 204 with grants, or
    403 with none."""
    ok = main(load_event("options_preflight"), ctx())
    assert ok["statusCode"] == 204
    assert ok["headers"]["access-control-allow-origin"] == ORIGIN
    assert "POST" in ok["headers"]["access-control-allow-methods"]
    evil = load_event("options_preflight")
    evil["http"]["headers"]["origin"] = "https://evil.example"
    denied = main(evil, ctx())
    assert denied["statusCode"] == 403
    assert "access-control-allow-origin" not in denied["headers"]


def test_cors_on_answers(main, worker: FakeBackend):
    """GIVEN a browser request WHEN from a listed origin THEN the answer exposes our headers;
    from another origin THEN 403 and no backend call."""
    ok = main(load_event("chat_completions", headers={"origin": ORIGIN}), ctx())
    assert ok["headers"]["access-control-allow-origin"] == ORIGIN
    assert "x-chat-backend" in ok["headers"]["access-control-expose-headers"]
    calls = worker.generation_requests()
    bad = main(load_event("chat_completions", headers={"origin": "https://evil.example"}), ctx())
    assert bad["statusCode"] == 403
    assert worker.generation_requests() == calls


def test_edge_refusals_carry_cors_headers(main):
    """GIVEN a browser body that cannot be decoded WHEN refused at the edge THEN the 400 still
    carries the CORS grant, so the page can read the error."""
    event = load_event("chat_completions", body="!!!", isBase64Encoded=True,
                       headers={"origin": ORIGIN})
    result = main(event, ctx())
    assert result["statusCode"] == 400
    assert result["headers"]["access-control-allow-origin"] == ORIGIN


def test_api_keys_for_server_callers(make_main, env, worker: FakeBackend):
    """GIVEN API_KEYS WHEN a server calls with no, a wrong, an almost-right or a right key
    THEN 401, 401, 401, 200; /health needs none; an allowlisted Origin is no credential."""
    main = make_main({**env, "API_KEYS": "key-alpha-123456,key-beta-654321"})
    statuses = []
    for headers in ({}, {"authorization": "Bearer nope"},
                    {"authorization": "Bearer key-alpha-12345"},
                    {"authorization": "Bearer key-beta-654321"},
                    {"x-api-key": "key-alpha-123456"}):
        statuses.append(main(load_event("chat_completions", headers=headers), ctx())["statusCode"])
    assert statuses == [401, 401, 401, 200, 200]
    assert main(load_event("health"), ctx())["statusCode"] == 200
    forged = main(load_event("chat_completions", headers={"origin": ORIGIN}), ctx())
    assert forged["statusCode"] == 401
    assert json.loads(forged["body"])["error"]["code"] == "invalid_api_key"
    assert forged["headers"]["access-control-allow-origin"] == ORIGIN  # the page reads why
    browser = main(load_event("chat_completions", headers={
        "origin": ORIGIN, "authorization": "Bearer key-beta-654321"}), ctx())
    assert browser["statusCode"] == 200


def test_no_secret_or_url_in_answers_or_logs(make_main, env, worker: FakeBackend,
                                             space: FakeBackend, hub: FakeHub,
                                             caplog: pytest.LogCaptureFixture, capfd):
    """GIVEN the fakes failing in every documented way WHEN requests are handled
    THEN no token and no backend URL appears in any answer or any log line."""
    caplog.set_level(logging.DEBUG)
    main = make_main({**env, "ROUTER_DEADLINE_MS": "2000", "FALLBACK_RESERVE_MS": "1000",
                      "API_KEYS": "key-alpha-123456"})
    answers = []
    auth = {"authorization": "Bearer key-alpha-123456"}
    for space_mode, worker_mode in [("ok", "ok"), ("sleeping", "ok"), ("status:503", "reset"),
                                    ("bad_json", "status:500"), ("hang", "no_choices"),
                                    ("status:401", "wrong_ctype")]:
        space.mode, worker.mode = space_mode, worker_mode
        for name in ("chat_completions_llm", "chat_completions", "embeddings", "ai_generate",
                     "health", "models"):
            answers.append(main(load_event(name, headers=auth), ctx()))
    answers.append(main(load_event("chat_completions",
                                   headers={"authorization": "Bearer key-alpha-1234567"}), ctx()))
    assert hub.restarts == 1  # the sleeping Space was woken, once
    out, err = capfd.readouterr()
    haystack = json.dumps(answers) + caplog.text + out + err
    assert "request" in caplog.text  # the logs were captured at all
    for secret in (*SECRETS, "key-alpha-123456", worker.url, space.url, hub.url,
                   worker.url.split("//")[1], space.url.split("//")[1]):
        assert secret not in haystack, secret


def test_ask_import_path_stays_light():
    """GIVEN a fresh interpreter WHEN the ask entry is imported and answers /health
    THEN torch, transformers, huggingface_hub, numpy and fastapi were never imported."""
    script = (
        "import sys, runpy, importlib.util, json\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"spec = importlib.util.spec_from_file_location('e', {str(ROOT / 'packages/chat/ask/__main__.py')!r})\n"  # noqa: E501
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "ev = {'http': {'method': 'GET', 'path': '/health', 'headers': {}, 'body': ''}}\n"
        "assert m.main(ev, None)['statusCode'] == 200\n"
        "print(json.dumps([n for n in ('torch','transformers','huggingface_hub','numpy',"
        "'fastapi','yaml') if n in sys.modules]))\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"WORKER_URL": "http://127.0.0.1:9"}, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == []
