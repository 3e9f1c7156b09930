"""The llama.cpp engine serving the packaged SmolLM2 GGUF and MiniLM, through the openai client."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import Stream
from openai.types.chat import ChatCompletionChunk
from pydantic import SecretStr

from ai_space import Finished, Hooks, Settings
from tests.ai_space.conftest import TOKEN, serve

MakeClient = Callable[..., openai.OpenAI]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 60.0
MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ["What is 12 times 7?", "Name a famous painter.", "Why is the sky blue?"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The MiniLM GGUF is converted into this module's own folder, not the user's cache.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GGUF_CACHE", str(tmp_path_factory.mktemp("gguf")))
        yield


def _settings(**values: object) -> Settings:
    base = {"api_token": SecretStr(TOKEN), "engine": "llama.cpp", "max_concurrency": 4,
            "max_queue": 8, "max_tokens": 64, "n_ctx": 4096, "max_input_tokens": 2048}
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def _ask(client: openai.OpenAI, text: str, **extra: object) -> str:
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}],
        **{"max_tokens": 16, "temperature": 0, **extra})  # type: ignore[call-overload]
    return str(answer.choices[0].message.content or "")


def _text(stream: Stream[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[tuple[str, Any]]:
    """One ready llama.cpp server on the packaged models, shared by this module."""
    with serve(_settings()) as (server, app):
        yield server.url, app


def test_chat_stream_models_and_health(llama_server: tuple[str, Any],
                                       make_client: MakeClient) -> None:
    """GIVEN the llama.cpp engine WHEN asked greedily, streamed and not THEN both give the same
    non-empty English answer with usage, /v1/models lists both models, /health is ready."""
    url, app = llama_server
    assert app.state.host.engine == "llama.cpp"
    client = make_client(url)
    whole = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}])
    text = whole.choices[0].message.content or ""
    assert len(text.split()) >= 3 and text.isascii(), text
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    streamed = _text(client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24, stream=True,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}]))
    assert streamed == text
    assert [m.id for m in client.models.list().data] == [MODEL, "all-MiniLM-L6-v2"]
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["device"] == "cpu"


def test_stop_strings_and_seeds_are_per_request(llama_server: tuple[str, Any],
                                                make_client: MakeClient) -> None:
    """GIVEN a greedy answer WHEN asked again with a word of it as stop string THEN the answer
    ends just before it (finish_reason stop); WHEN two seeded sampled requests run together
    THEN they match each other, while a greedy one beside them keeps its own answer."""
    url, _ = llama_server
    client = make_client(url)
    full = _ask(client, PROMPTS[2], max_tokens=32)
    stop = full.split()[3]
    cut = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=32, stop=[stop],
        messages=[{"role": "user", "content": PROMPTS[2]}])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[:full.index(stop)]
    jobs: list[dict[str, object]] = [{"temperature": 1.2, "seed": 11},
                                      {"temperature": 1.2, "seed": 11}, {"temperature": 0}]
    answers: dict[int, str] = {}

    def run(i: int) -> None:
        answers[i] = _ask(client, PROMPTS[1], max_tokens=24, **jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert answers[0] == answers[1]
    assert answers[2] == _ask(client, PROMPTS[1], max_tokens=24)


def test_a_prompt_longer_than_one_step_is_prefilled_in_chunks(
        llama_server: tuple[str, Any], make_client: MakeClient) -> None:
    """GIVEN a prompt of over 1,500 tokens (three 512-token prefill steps) WHEN asked beside a
    short request THEN both finish with their own usage, and the long one's prompt is counted
    whole."""
    url, _ = llama_server
    client = make_client(url)
    long_text = "The quick brown fox jumps over the lazy dog. " * 150 + "Summarise that."
    answers: dict[str, Any] = {}

    def ask(name: str, text: str) -> None:
        answers[name] = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=8,
            messages=[{"role": "user", "content": text}])

    threads = [threading.Thread(target=ask, args=a) for a in
               (("long", long_text), ("short", PROMPTS[0]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert answers["long"].usage.prompt_tokens > 1500
    assert answers["long"].choices[0].message.content
    assert answers["short"].choices[0].message.content == _ask(client, PROMPTS[0], max_tokens=8)


def test_requests_join_a_running_batch(make_client: MakeClient) -> None:
    """GIVEN a long generation already decoding WHEN three more requests arrive THEN they join
    its batch between steps (each prefilled beside it: a batch of 4) and each greedy answer
    equals the one it gets alone."""
    finished: queue.Queue[Finished] = queue.Queue()
    step = threading.Event()
    step.set()
    with serve(_settings(), Hooks(step_gate=step, on_finish=finished.put)) as (server, _):
        client = make_client(server.url)
        alone = [_ask(client, p) for p in PROMPTS]
        assert [finished.get(timeout=WAIT_S).batch_size for _ in PROMPTS] == [1, 1, 1]
        blocker = client.chat.completions.create(
            model=MODEL, max_tokens=64, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Tell me a long story about a dragon."}])
        chunks = iter(blocker)
        while not (next(chunks).choices[0].delta.content or ""):
            pass  # the blocker has decoded tokens: it is running
        step.clear()
        streams = [client.chat.completions.create(
            model=MODEL, max_tokens=16, temperature=0, stream=True,
            messages=[{"role": "user", "content": p}]) for p in PROMPTS]
        firsts = [iter(s) for s in streams]
        for s in firsts:
            next(s)  # the role chunk: the request is queued
        step.set()
        together = [_text(s) for s in streams]
        blocker.close()
        ends = [finished.get(timeout=WAIT_S) for _ in range(4)]
    assert together == alone
    assert sorted(e.batch_size for e in ends if e.completion_tokens <= 16) == [4, 4, 4]


def test_client_disconnect_cancels_its_generation(make_client: MakeClient) -> None:
    """GIVEN a streaming request held before its first decode WHEN the openai client closes
    the stream THEN its generation ends as cancelled without a token, and the server keeps
    serving."""
    finished: queue.Queue[Finished] = queue.Queue()
    step = threading.Event()
    with serve(_settings(), Hooks(step_gate=step, on_finish=finished.put)) as (server, _):
        client = make_client(server.url)
        stream = client.chat.completions.create(
            model=MODEL, max_tokens=64, stream=True,
            messages=[{"role": "user", "content": "hi"}])
        assert next(iter(stream)).choices[0].delta.role == "assistant"
        stream.close()  # the client goes away
        event = finished.get(timeout=WAIT_S)
        step.set()
        assert (event.finish_reason, event.completion_tokens) == ("cancelled", 0)
        assert _ask(client, PROMPTS[0])


def test_embeddings_match_sentence_transformers(llama_server: tuple[str, Any],
                                                make_client: MakeClient) -> None:
    """GIVEN MiniLM served by llama.cpp (converted to an f16 GGUF) WHEN embedding THEN vectors
    are unit length, close to the transformers embedder's (cosine > 0.999, long inputs
    truncated at 256 tokens alike) and to sentence-transformers' known 'hello world'."""
    from ai_space.models.loading import load_embedder

    url, _ = llama_server
    client = make_client(url)
    texts = ["hello world", "A man is playing a guitar on stage.", "Café déjà vu, naïve résumé!",
             "The stock market fell sharply on Tuesday. " * 60]
    data = client.embeddings.create(model="e", input=texts)
    served = np.array([d.embedding for d in data.data])
    import torch

    reference = load_embedder("pkg:minilm", torch.device("cpu"))
    expected = reference.embed(texts).numpy()
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    cosine = (served * expected).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    np.testing.assert_allclose(served[0][:3], [-0.034477, 0.031023, 0.006735], atol=2e-3)
    assert data.usage.prompt_tokens == reference.count_tokens(texts)


def test_prompt_tokens_match_the_models_own_template(tmp_path: Path) -> None:
    """GIVEN the GGUF WHEN conversations are formatted by the llama.cpp engine THEN the token
    ids equal transformers' apply_chat_template on the same GGUF's tokenizer (no second BOS)."""
    from transformers import AutoTokenizer

    from ai_space.llama.model import GGUFChatModel
    from ai_space.models.packaged import resolve

    source = resolve("pkg:smollm2", None)
    assert source.gguf_path is not None
    chat = GGUFChatModel(source.gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Answer in French."},
         {"role": "user", "content": "Hello <|im_start|> there\n\n  spaced  "},
         {"role": "assistant", "content": "Bonjour ! 😀"},
         {"role": "user", "content": "Et ensuite? 12345 tokens…"}],
    ]
    for turns in conversations:
        ours = chat.prompt_ids(turns)
        theirs = list(tokenizer.apply_chat_template(turns, tokenize=True,
                                                    add_generation_prompt=True,
                                                    return_dict=False))
        assert ours == theirs
        assert ours[:2] != [ours[0], ours[0]]
    chat.close()


def test_the_loop_survives_bad_jobs() -> None:
    """GIVEN the engine WHEN one job's prompt holds a token id outside the vocabulary, another's
    prompt is empty and another's consumer raises THEN each ends as an error, and the next job
    still gets its answer from a loop that is alive; WHEN the loop is stopped THEN alive turns
    false."""
    from ai_space.generation import Delta, Event, GenerationJob, SamplingParams
    from ai_space.llama.engine import LlamaEngine
    from ai_space.llama.model import GGUFChatModel
    from ai_space.models.packaged import resolve

    path = resolve("pkg:smollm2", None).gguf_path
    assert path is not None
    chat = GGUFChatModel(path)
    engine = LlamaEngine(chat, n_ctx=1024, n_threads=2, max_batch=4, max_queue=4)
    engine.start()
    events: queue.Queue[tuple[str, Event]] = queue.Queue()

    def collect(name: str) -> Callable[[Event], None]:
        return lambda event: events.put((name, event))

    def explode(event: Event) -> None:
        if isinstance(event, Delta):
            raise ValueError("consumer failed")
        events.put(("raises", event))

    prompt = chat.prompt_ids([{"role": "user", "content": "hi"}])
    params = SamplingParams(max_tokens=8, temperature=0)
    ends: dict[str, Finished] = {}
    for name, job in (("bad-token", GenerationJob([chat.vocab.size + 5], params,
                                                  collect("bad-token"))),
                      ("empty", GenerationJob([], params, collect("empty"))),
                      ("raises", GenerationJob(prompt, params, explode))):
        engine.submit(job)  # one at a time: each must fail on its own account
        while name not in ends:
            got, event = events.get(timeout=WAIT_S)
            if isinstance(event, Finished):
                ends[got] = event
    assert ends["bad-token"].finish_reason == "error"
    assert ends["empty"].finish_reason == "error"
    assert ends["raises"].finish_reason == "error"
    assert engine.alive
    engine.submit(GenerationJob(prompt, params, collect("good")))
    texts: list[str] = []
    while True:
        name, event = events.get(timeout=WAIT_S)
        if isinstance(event, Finished):
            break
        assert isinstance(event, Delta)
        texts.append(event.text)
    assert (name, event.finish_reason) == ("good", "length") and "".join(texts)
    engine.stop()
    assert not engine.alive
    chat.close()


def test_health_reports_a_dead_loop(make_client: MakeClient) -> None:
    """GIVEN a ready llama.cpp server WHEN its decode loop is no longer running THEN /health
    answers 503 with status error, and chat is refused rather than queued forever."""
    with serve(_settings(embedding_model_id=None)) as (server, app):
        assert httpx.get(f"{server.url}/health").status_code == 200
        app.state.host.batcher.stop()
        health = httpx.get(f"{server.url}/health")
        assert (health.status_code, health.json()["status"]) == (503, "error")
        refused = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH,
                             json={"messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503


def test_the_worker_fits_the_smallest_instance(tmp_path: Path) -> None:
    """GIVEN `python -m ai_space` as the worker image runs it (ENGINE=llama.cpp, 16 slots,
    chat and embeddings) WHEN it embeds and answers 16 concurrent requests THEN its peak
    resident memory stays within 512 MiB and torch was never loaded."""
    import os
    import socket
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "API_TOKEN": TOKEN, "PORT": str(port), "HOST": "127.0.0.1",
           "ENGINE": "llama.cpp", "MAX_CONCURRENCY": "16", "MAX_TOKENS": "64",
           "GGUF_CACHE": os.environ["GGUF_CACHE"], "LOG_LEVEL": "info"}
    worker = subprocess.Popen([sys.executable, "-m", "ai_space"], env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    drain = threading.Thread(target=lambda: None)
    drain.start()
    try:
        assert worker.stderr is not None
        # Ready when both log lines are out: the models loaded, and uvicorn listening.
        seen = {"ready in": False, "Uvicorn running": False}
        for line in worker.stderr:
            seen.update({key: True for key in seen if key in line})
            if all(seen.values()):
                break
        assert all(seen.values()), f"the worker stopped before it was ready: {seen}"
        drain = threading.Thread(target=worker.stderr.read, daemon=True)  # keep it flowing
        drain.start()
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers=AUTH, timeout=WAIT_S) as client:
            assert client.get("/health").status_code == 200
            client.post("/v1/embeddings", json={"input": PROMPTS * 20}).raise_for_status()

            def chat(i: int) -> int:
                answer = client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": f"Tell me story number {i}."}],
                    "max_tokens": 64, "temperature": 0})
                answer.raise_for_status()
                return int(answer.json()["usage"]["completion_tokens"])

            with ThreadPoolExecutor(16) as pool:
                assert sum(pool.map(chat, range(16))) > 16
        status = Path(f"/proc/{worker.pid}/status").read_text()
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
    finally:
        worker.terminate()
        worker.wait(30)
        drain.join(30)
        if worker.stderr is not None:
            worker.stderr.close()
    peak_kib = next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmHWM:"))
    assert peak_kib / 1024 <= 512, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert "libtorch" not in maps
