"""ai_space logs one JSON object per line, so no path or header can forge a log line (issue 19,
item 8)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from ai_space.logs import JsonFormatter
from bench.common import free_port
from tests.support.loopback import LoopbackServer

TOKEN = "tok-4f9a2c7e1b3d5a6c"
FORGED = "2099-01-01 INFO ai_space: token accepted for admin"


def _served(tmp_path: Path, ask: Callable[[str], list[httpx.Response]]
            ) -> tuple[list[httpx.Response], list[str]]:
    """Run `python -m ai_space` with a token (its model folder empty: only its door answers),
    call `ask(base_url)` once it listens; (its answers, every line the server wrote)."""
    port = free_port()
    env = {**os.environ, "API_TOKEN": TOKEN, "PORT": str(port), "HOST": "127.0.0.1",
           "MODEL_ID": str(tmp_path), "EMBEDDING_MODEL_ID": "none", "LOG_LEVEL": "info"}
    server = subprocess.Popen([sys.executable, "-m", "ai_space"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:  # until uvicorn listens: no polling, no sleeps
            lines.append(line)
            if "Uvicorn running" in line:
                break
        answers = ask(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        rest, _ = server.communicate(timeout=60)
    return answers, lines + rest.splitlines(keepends=True)


def test_a_newline_in_the_path_cannot_start_a_log_line(tmp_path: Path) -> None:
    """GIVEN `python -m ai_space` with a token (its model folder empty: only its door matters
    here) WHEN a client without a token asks for `/x%0a<a forged log line>` THEN every line the
    server wrote is one JSON object, none starts with the forged text, the 401 line holds the
    newline inside its `msg`, and the token appears nowhere."""
    answers, lines = _served(tmp_path, lambda url: [httpx.get(
        f"{url}/x%0a{FORGED.replace(' ', '%20')}", timeout=30)])
    assert answers[0].status_code == 401
    records = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert not any(line.startswith("2099") for line in lines)
    assert any(r["logger"] == "ai_space" and r["msg"] == f"401 GET /x\n{FORGED}"
               for r in records)
    assert TOKEN not in "".join(lines)


def test_each_request_line_carries_the_traceparent_it_received(tmp_path: Path) -> None:
    """GIVEN `python -m ai_space` with a token (its model folder empty) WHEN the router's
    request arrives with a W3C `traceparent`, and another with a malformed one THEN the lines
    written for the first carry that `traceparent` and its `trace_id` (the router's span is
    found from the model server's log), every line has an RFC 3339 UTC `time`, and the
    malformed header is not echoed into the log."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{trace_id}-b7ad6b7169203331-01"
    answers, lines = _served(tmp_path, lambda url: [
        httpx.post(f"{url}/v1/chat/completions", json={}, timeout=30,
                   headers={"traceparent": value})
        for value in (traceparent, "00-forged-by-the-caller-01")])
    assert [a.status_code for a in answers] == [401, 401]
    records = [json.loads(line) for line in lines]
    refusals = [r for r in records if r["msg"] == "401 POST /v1/chat/completions"]
    assert len(refusals) == 2
    assert (refusals[0]["traceparent"], refusals[0]["trace_id"]) == (traceparent, trace_id)
    assert "traceparent" not in refusals[1] and "forged" not in "".join(lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"])
               for r in records)


def test_a_chat_and_an_embedding_log_their_traceparent(tiny_server: LoopbackServer) -> None:
    """GIVEN the model server on tiny models, its `ai_space` lines formatted as it writes them
    WHEN a streamed chat and an embedding arrive, each with its own `traceparent` THEN the
    chat's line and the embedding's line each carry their own request's `trace_id`; and the
    embedding's tokens are counted (`ai_space_tokens_total{direction="embedding"}`)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ai_space")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    chat_trace, embed_trace = os.urandom(16).hex(), os.urandom(16).hex()
    try:
        with httpx.Client(base_url=tiny_server.url, timeout=60, headers={
                "authorization": f"Bearer {TOKEN}"}) as client:
            with client.stream("POST", "/v1/chat/completions", headers={
                    "traceparent": f"00-{chat_trace}-{os.urandom(8).hex()}-01"},
                    json={"model": "tiny-llama", "max_tokens": 4, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}) as answer:
                assert answer.status_code == 200
                assert answer.read().endswith(b"data: [DONE]\n\n")
            embedded = client.post("/v1/embeddings", headers={
                "traceparent": f"00-{embed_trace}-{os.urandom(8).hex()}-01"},
                json={"model": "e", "input": "hello"})
            assert embedded.status_code == 200
            scraped = client.get("/metrics").text
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    chats = [r for r in records if r["msg"].startswith("chat stream=True")]
    embeds = [r for r in records if r["msg"].startswith("embeddings inputs=1")]
    assert [r.get("trace_id") for r in chats] == [chat_trace]
    assert [r.get("trace_id") for r in embeds] == [embed_trace]
    counted = re.search(r'ai_space_tokens_total\{direction="embedding"\} (\S+)', scraped)
    assert counted is not None and float(counted.group(1)) >= \
        embedded.json()["usage"]["prompt_tokens"] > 0
