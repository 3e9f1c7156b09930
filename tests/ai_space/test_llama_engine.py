"""The llama.cpp front on the real llama-server, serving the packaged SmolLM2 GGUF and MiniLM:
chat, continuation, hang-ups, a killed engine, embeddings, metrics, logs and memory."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import Stream
from openai.types.chat import ChatCompletionChunk

from tests.ai_space.conftest import TOKEN, serve
from tests.ai_space.llama_support import (
    AUTH,
    MODEL,
    busy_slots,
    decode_steps,
    decoded,
    engine_get,
    llama_settings,
    require_engine,
    token_time,
    wait_until,
)

MakeClient = Callable[..., openai.OpenAI]
WAIT_S = 60.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The MiniLM GGUF is converted into this module's own folder, not the user's cache.
    require_engine()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GGUF_CACHE", str(tmp_path_factory.mktemp("gguf")))
        yield


def _text(stream: Stream[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[tuple[str, Any]]:
    """One ready worker on the packaged models, shared by this module."""
    with serve(llama_settings()) as (server, app):
        yield server.url, app


def test_chat_stream_models_and_health(llama_server: tuple[str, Any],
                                       make_client: MakeClient) -> None:
    """GIVEN the llama.cpp front WHEN asked greedily, streamed and not THEN both give the same
    non-empty answer with usage, /v1/models lists both models, /health is ready."""
    url, app = llama_server
    assert app.state.host.engine == "llama.cpp"
    client = make_client(url)
    ask: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_tokens": 24,
           "messages": [{"role": "user", "content": "Write one sentence about the sea."}]}
    whole = client.chat.completions.create(**ask)
    text = whole.choices[0].message.content or ""
    assert len(text.split()) >= 3, text
    assert whole.model == MODEL and whole.choices[0].finish_reason in {"stop", "length"}
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert _text(client.chat.completions.create(**ask, stream=True)) == text
    assert [m.id for m in client.models.list().data] == [MODEL, "all-MiniLM-L6-v2"]
    health = httpx.get(f"{url}/health").json()
    assert (health["status"], health["engine"]) == ("ready", "llama.cpp")


def test_streams_one_after_another_all_finish(llama_server: tuple[str, Any],
                                              make_client: MakeClient) -> None:
    """GIVEN the llama.cpp front WHEN one client asks for ten streams in a row THEN each ends
    with a finish_reason: llama-server drops a kept-alive connection after a stream, and the
    front must not take that for an engine that died (a 503 the router fails over on)."""
    url, _ = llama_server
    client = make_client(url)
    for i in range(10):
        stream = client.chat.completions.create(
            model=MODEL, max_tokens=4, stream=True,
            messages=[{"role": "user", "content": f"Count to {i + 2}."}])
        finishes = [c.choices[0].finish_reason for c in stream if c.choices]
        assert finishes[-1] in {"stop", "length"}, (i, finishes)


def test_only_the_front_reaches_the_engines(llama_server: tuple[str, Any]) -> None:
    """GIVEN the running engines WHEN their command lines and files are read THEN each listens
    on a unix socket in a private folder, takes its key from a 0600 file (never on its command
    line), runs with the declared flags, and refuses a request without the key."""
    _, app = llama_server
    for process in app.state.host.engines.processes:
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        args = [a.decode() for a in cmdline]
        assert process.key and process.key not in " ".join(args)
        assert args[args.index("--host") + 1].endswith(".sock")
        assert stat.S_IMODE(process.folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((process.folder / "key").stat().st_mode) == 0o600
        assert {"--metrics", "--slots", "--no-webui"} <= set(args)
        assert args[args.index("--cache-ram") + 1] == "0"
        transport = httpx.HTTPTransport(uds=str(process.socket))
        with httpx.Client(transport=transport, base_url="http://engine") as bare:
            assert bare.get("/v1/models").status_code == 401
    chat = app.state.host.engines.chat_process.command()
    for flag, value in (("--parallel", "4"), ("--cache-type-k", "q8_0"), ("--threads", "1"),
                        ("--kv-unified-per-slot", str(2048 + 64)), ("--ctx-size", "4096")):
        assert chat[chat.index(flag) + 1] == value
    assert "--jinja" in chat


def test_a_prefill_is_continued_once(llama_server: tuple[str, Any],
                                     make_client: MakeClient) -> None:
    """GIVEN a chat ending in the assistant's own unfinished message WHEN answered, streamed
    and not THEN the answer goes on from it: one answer, not repeating the prefill."""
    client = make_client(llama_server[0])
    prefill = "The capital of France is"
    ask: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_tokens": 12,
           "messages": [{"role": "user", "content": "What is the capital of France?"},
                        {"role": "assistant", "content": prefill}]}
    whole = client.chat.completions.create(**ask).choices[0].message.content or ""
    streamed = _text(client.chat.completions.create(**ask, stream=True))
    assert whole == streamed and whole.strip()
    assert prefill not in whole and not whole.lstrip().startswith("The capital"), whole


def _raw_request(url: str, body: dict[str, Any]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\n" +
                 f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(payload)}\r\n\r\n"
                 .encode() + payload)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_a_hang_up_frees_its_slot_within_100_ms(llama_server: tuple[str, Any], stream: bool,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN a generation decoding in a llama-server slot WHEN its caller hangs up (streamed or
    not) THEN the engine's own /slots shows the slot free within 100 ms, having decoded at most
    3 tokens more, long before the answer would have ended; the front logs the request as a
    disconnect. On this shared machine a decode step sometimes takes 100 ms by itself (the
    scheduler's, not ours), so there the bound that holds is the tokens: llama-server sees
    the closed connection when it writes its next token and cancels at its loop's next turn."""
    caplog.set_level("INFO", logger="ai_space")
    url, app = llama_server
    process = app.state.host.engines.chat_process
    sock = _raw_request(url, {"messages": [{"role": "user", "content": "Tell a long story."}],
                              "max_tokens": 64, "stream": stream,
                              "logit_bias": {"2": -100}})  # no <|im_end|>: it runs to 64
    try:
        per_token = token_time(process)
        before, steps = decoded(process), decode_steps(process)
    finally:
        sock.close()
    freed = wait_until(lambda: busy_slots(process) == 0, 5.0)
    extra = decode_steps(process) - steps  # one request running: a step is one of its tokens
    sys.stderr.write(f"\nhang-up (stream={stream}): slot free after {freed * 1000:.0f} ms, "
                     f"{extra} more tokens; a token takes {per_token * 1000:.0f} ms\n")
    assert before + extra < 64
    assert freed <= 0.1 or extra <= 3, (f"the slot was freed {freed * 1000:.0f} ms after the "
                                        f"hang-up, {extra} tokens later")
    wait_until(lambda: any("finish=disconnect" in r.getMessage() for r in caplog.records), 5.0)


def test_killing_the_engine_mid_stream(make_client: MakeClient) -> None:
    """GIVEN a stream being answered WHEN the chat engine is killed (SIGKILL) THEN the stream
    ends with an error event, /health says error at once and chat gets 503 (the router fails
    over on both); the front restarts the engine, and it is ready and answering again."""
    with serve(llama_settings(embedding_model_id=None)) as (server, app):
        engines = app.state.host.engines
        first_pid = engines.chat_process.pid
        client = make_client(server.url)
        stream = client.chat.completions.create(
            model=MODEL, max_tokens=64, stream=True, logit_bias={"2": -100},
            messages=[{"role": "user", "content": "Tell a long story."}])
        chunks = iter(stream)
        while not (next(chunks).choices[0].delta.content or ""):
            pass
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(openai.APIError):
            for _ in chunks:
                pass
        health = httpx.get(f"{server.url}/health")
        assert (health.status_code, health.json()["status"]) == (503, "error")
        refused = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH,
                             json={"messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503, refused.text
        wait_until(lambda: httpx.get(f"{server.url}/health").status_code == 200, WAIT_S, 0.05)
        assert engines.chat_process.pid != first_pid and engines.chat_process.restarts == 1
        again = client.chat.completions.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert again.choices[0].message.content


def test_embeddings_match_sentence_transformers(llama_server: tuple[str, Any],
                                                make_client: MakeClient) -> None:
    """GIVEN MiniLM served by llama-server (an f16 GGUF, mean pooling) WHEN embedding THEN the
    vectors are unit length, close to the transformers embedder's (cosine > 0.999, long inputs
    truncated at 256 tokens alike) and to sentence-transformers' known 'hello world'."""
    import torch

    from ai_space.models.loading import load_embedder

    client = make_client(llama_server[0])
    texts = ["hello world", "A man is playing a guitar on stage.", "Café déjà vu, naïve résumé!",
             "The stock market fell sharply on Tuesday. " * 60]
    data = client.embeddings.create(model="e", input=texts)
    served = np.array([d.embedding for d in data.data])
    reference = load_embedder("pkg:minilm", torch.device("cpu"))
    expected = reference.embed(texts).numpy()
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    cosine = (served * expected).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    np.testing.assert_allclose(served[0][:3], [-0.034477, 0.031023, 0.006735], atol=2e-3)
    assert data.usage.prompt_tokens == reference.count_tokens(texts)
    short = client.embeddings.create(model="e", input="hello world").data[0].embedding
    np.testing.assert_allclose(short, served[0], atol=1e-5)


def test_metrics_carry_our_names_and_the_engines_gauges(llama_server: tuple[str, Any],
                                                        make_client: MakeClient) -> None:
    """GIVEN an answered chat WHEN /metrics is scraped THEN our counters saw it (tokens out,
    time to first token, finish reason) and the engine's own gauges are there: queue, slots
    busy, KV use, llama-server's requests_processing."""
    url, app = llama_server
    answer = make_client(url).chat.completions.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert answer.usage is not None
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert httpx.get(f"{url}/metrics").status_code == 401
    for name in ("ai_space_queue_depth", "ai_space_running_requests",
                 "ai_space_kv_cache_usage_ratio", "ai_space_engine_requests_processing",
                 "ai_space_engine_requests_deferred", "ai_space_engine_slots_busy",
                 'ai_space_engine_info{device="cpu",engine="llama.cpp"} 1.0',
                 "ai_space_time_to_first_token_seconds_count"):
        assert name in text, name
    out = next(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('ai_space_tokens_total{direction="out"}'))
    assert out >= answer.usage.completion_tokens
    assert engine_get(app.state.host.engines.chat_process, "/slots")


def test_engine_logs_are_ours_and_a_full_queue_is_429(caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN a worker with one slot and no queue WHEN it starts THEN llama-server's own lines
    are our log records (logger ai_space.engine, named by engine) and never hold its key;
    WHEN a second request comes while one runs THEN 429 with Retry-After."""
    caplog.set_level("INFO")
    with serve(llama_settings(max_concurrency=1, max_queue=0, embedding_model_id=None)) as (
            server, app):
        key = app.state.host.engines.chat_process.key
        lines = [r for r in caplog.records if r.name == "ai_space.engine"]
        # The self-check's own llama-server ("probe") logs too, before the chat engine starts.
        assert {getattr(r, "engine", "") for r in lines} <= {"probe", "chat"}
        assert any(getattr(r, "engine", "") == "chat" for r in lines)
        assert not any(key in r.getMessage() for r in caplog.records)
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=WAIT_S) as client, \
                client.stream("POST", "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "Tell a long story."}],
                    "max_tokens": 64, "stream": True, "logit_bias": {"2": -100}}) as first:
            events = first.iter_lines()
            next(events)
            gc.collect()  # what a full run's collector may do at any moment: see below
            second = client.post("/v1/chat/completions",
                                 json={"messages": [{"role": "user", "content": "hi"}]})
            assert second.status_code == 429 and second.headers["Retry-After"]
            assert second.json()["error"]["code"] == "queue_full"
            # The first stream ran all along: its iterator is held, because httpx closes the
            # connection when a dropped one is collected, and the slot would be free for a 200.
            assert next(line for line in events if line).startswith("data: ")


def _peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmHWM:"))


def test_the_worker_fits_the_smallest_instance() -> None:
    """GIVEN `python -m ai_space` as the worker image runs it (ENGINE=llama.cpp, 16 slots,
    chat and embeddings) WHEN it embeds and answers 16 concurrent requests THEN the peaks of
    its resident memory and its engines' add up to at most 512 MiB, and torch never loaded."""
    from tests.ai_space.worker_process import WorkerProcess

    with WorkerProcess({"MAX_CONCURRENCY": "16", "MAX_TOKENS": "64"}) as worker:
        worker.exercise(16)
        pids = [worker.pid, *worker.engine_pids()]
        assert len(pids) == 3, pids
        peak_mib = sum(_peak_kib(pid) for pid in pids) / 1024
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
    assert peak_mib <= 512, f"peak RSS {peak_mib:.0f} MiB"
    assert "libtorch" not in maps
