"""Issue 11, defects 1 and 7: one bad job never stops the model server, and only validation
errors are 400s (anything else is a 500 with a request id, the details in the log)."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from ai_space import Settings
from ai_space.batching import Batcher
from ai_space.generation import Finished, GenerationJob, SamplingParams
from ai_space.models.loading import load_chat_model
from tests.ai_space.conftest import TOKEN, serve

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HELLO = [{"role": "user", "content": "hello world"}]
WAIT_S = 60.0
TORCH_SEED_LIMIT = 2**64 - 1  # torch.Generator.manual_seed's largest seed


class _Gate(threading.Event):
    """A step gate that also says when the batch first reached it (a threading double)."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.reached.set()
        return super().wait(timeout)


def _job(events: queue.Queue[Any], seed: int | None, max_tokens: int = 3) -> GenerationJob:
    return GenerationJob([1, 2, 3], SamplingParams(max_tokens=max_tokens, seed=seed),
                         events.put)


def _finished(events: queue.Queue[Any]) -> Finished:
    while True:
        event = events.get(timeout=WAIT_S)
        if isinstance(event, Finished):
            return event


@pytest.fixture(scope="module")
def tiny_chat(tiny_chat_dir: Path) -> Any:
    """The tiny chat model, loaded once for these batcher tests."""
    return load_chat_model(str(tiny_chat_dir), None, torch.device("cpu"), torch.float32)


def _batcher(chat: Any, gate: threading.Event | None = None) -> Batcher:
    batcher = Batcher(chat.model, chat.tokenizer, max_batch=4, max_queue=4,
                      eos_ids=set(chat.eos_ids), step_gate=gate)
    batcher.start()
    return batcher


def test_seed_outside_torch_range_is_a_400_and_the_server_lives(tiny_settings: Settings) -> None:
    """GIVEN a ready server WHEN a request carries `seed: 2**70` THEN 400 naming `seed`;
    THEN a seeded request still completes and /health still says ready."""
    with serve(tiny_settings) as (server, _):
        bad = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=20,
                         json={"messages": HELLO, "max_tokens": 2, "seed": 2**70})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["code"] == "invalid_request"
        assert "seed" in bad.json()["error"]["message"]
        for seed in (TORCH_SEED_LIMIT, -(2**63), 7):
            ok = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=20,
                            json={"messages": HELLO, "max_tokens": 2, "seed": seed})
            assert ok.status_code == 200, (seed, ok.text)
        assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_job_whose_setup_fails_ends_alone_and_the_loop_lives(tiny_chat: Any) -> None:
    """GIVEN the batcher WHEN a job's setup raises (a seed torch refuses, past validation)
    THEN that job ends with `error`; THEN the next job is served by the same loop."""
    batcher = _batcher(tiny_chat)
    try:
        bad: queue.Queue[Any] = queue.Queue()
        batcher.submit(_job(bad, seed=2**70))
        failed = _finished(bad)
        assert failed.finish_reason == "error" and failed.error == "ValueError"
        good: queue.Queue[Any] = queue.Queue()
        batcher.submit(_job(good, seed=3))
        assert _finished(good).finish_reason == "length"
        assert batcher.alive
    finally:
        batcher.stop()


def test_a_joining_job_whose_setup_fails_leaves_the_running_batch_alone(tiny_chat: Any) -> None:
    """GIVEN a batch held at the step gate WHEN a job with a bad seed joins it
    THEN the joining job ends with `error` and the running one finishes normally."""
    gate = _Gate()
    batcher = _batcher(tiny_chat, gate)
    try:
        running: queue.Queue[Any] = queue.Queue()
        batcher.submit(_job(running, seed=None, max_tokens=4))
        assert gate.reached.wait(WAIT_S)  # the first batch is taken and parked
        joining: queue.Queue[Any] = queue.Queue()
        batcher.submit(_job(joining, seed=2**70))
        gate.set()
        assert _finished(joining).finish_reason == "error"
        assert _finished(running).finish_reason == "length"
        assert batcher.alive
    finally:
        batcher.stop()


def test_health_reports_a_dead_generation_loop(tiny_settings: Settings) -> None:
    """GIVEN a ready server whose generation loop has ended WHEN /health and chat are called
    THEN /health answers 503 `error` and chat answers 503 at once instead of hanging."""
    with serve(tiny_settings) as (server, app):
        app.state.host.batcher.stop()
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        chat = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=20,
                          json={"messages": HELLO, "max_tokens": 2})
        assert chat.status_code == 503, chat.text
        assert chat.json()["error"]["code"] == "model_error"


def _with_template(settings: Settings, src: Path, dest: Path, template: str) -> Settings:
    shutil.copytree(src, dest)
    config = dest / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["chat_template"] = template
    config.write_text(json.dumps(data))
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    return settings.model_copy(update={"model_id": str(dest)})


def test_a_template_refusal_is_a_400_with_its_words(tiny_settings: Settings, tiny_chat_dir: Path,
                                                    tmp_path: Path) -> None:
    """GIVEN a chat template that refuses system turns (raise_exception)
    WHEN a request has a system turn THEN 400 invalid_messages, with the template's words."""
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('System role not supported') }}{% endif %}"
                "{{ m['content'] }}{% endfor %}")
    settings = _with_template(tiny_settings, tiny_chat_dir, tmp_path / "m", template)
    with serve(settings) as (server, _):
        answer = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=20,
                            json={"messages": [{"role": "system", "content": "x"}, *HELLO]})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_messages"
    assert "System role not supported" in answer.json()["error"]["message"]


def test_an_unexpected_error_is_a_500_with_a_request_id_never_its_text(
        tiny_settings: Settings, tiny_chat_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN a chat template that fails with a bug of its own (not a refusal)
    WHEN a request comes THEN 500 with a generic message and a request id, the exception's
    text is not in the answer, and the log has the details under the same request id."""
    template = "{{ messages[0]['content'] | int // 0 }} secret-detail-9f3"
    settings = _with_template(tiny_settings, tiny_chat_dir, tmp_path / "m", template)
    with caplog.at_level(logging.ERROR, logger="ai_space"), serve(settings) as (server, _):
        answer = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=20,
                            json={"messages": HELLO})
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "internal_error" and error["type"] == "server_error"
    assert "division" not in answer.text and "secret-detail" not in answer.text
    request_id = answer.headers["x-request-id"]
    assert request_id in error["message"]
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert logged[0].exc_info[0] is ZeroDivisionError


def test_a_lone_surrogate_in_a_message_is_a_400(tiny_server: Any) -> None:
    """GIVEN a message holding an unpaired surrogate (valid JSON, not valid Unicode)
    WHEN it is sent THEN 400, not a 500: it is the caller's input."""
    body = '{"messages": [{"role": "user", "content": "bad \\ud800 text"}], "max_tokens": 2}'
    answer = httpx.post(f"{tiny_server.url}/v1/chat/completions", timeout=20,
                        headers={**AUTH, "content-type": "application/json"}, content=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"
