"""A mid-stream failover continued by the real worker (issue 18, item 2): ai_space serving the
packaged SmolLM2 GGUF on each engine must continue the partial answer, not start a new one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from ai_space import Settings as WorkerSettings
from tests.ai_space.conftest import TOKEN, serve
from tests.conftest import HF_TOKEN, SPACE_ID, SPACE_TOKEN
from tests.fakes.stream_backend import StreamBackend
from tests.support.loopback import LoopbackServer
from tests.support.service import serve_main

QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
PREFIX = "The capital of France is"


@pytest.fixture(scope="module", params=["llama.cpp", "transformers"])
def real_worker(request: pytest.FixtureRequest) -> Iterator[str]:
    """The worker: ai_space on the packaged SmolLM2, on each engine in turn."""
    settings = WorkerSettings(api_token=SecretStr(TOKEN), engine=request.param,
                              embedding_model_id=None, max_tokens=64, n_ctx=2048,
                              max_input_tokens=1024)
    with serve(settings) as (server, app):
        assert app.state.host.engine == request.param
        yield server.url


@pytest.fixture
def cut_space() -> Iterator[StreamBackend]:
    """A Space whose stream is cut right after it said `PREFIX`."""
    fake = StreamBackend("space", text=PREFIX + " Paris.", mode="cut", after=5)
    with LoopbackServer(fake) as server:
        fake.url = server.url
        yield fake
        fake.release()


@pytest.mark.slow
def test_the_real_worker_continues_the_partial_answer(
        make_main: Callable[[dict[str, str]], Any], real_worker: str,
        cut_space: StreamBackend, hub: Any) -> None:
    """GIVEN a Space cut after "The capital of France is" and the real SmolLM2 worker as the
    fallback WHEN the openai client streams the question greedily THEN it reads one answer that
    says the prefix once and goes on to Paris, with one finish_reason, from the worker."""
    main = make_main({"WORKER_URL": real_worker, "WORKER_TOKEN": TOKEN,
                      "SPACE_URL": cut_space.url, "SPACE_TOKEN": SPACE_TOKEN,
                      "SPACE_ID": SPACE_ID, "HF_TOKEN": HF_TOKEN, "HF_ENDPOINT": hub.url,
                      "FIRST_TOKEN_TIMEOUT_MS": "20000"})
    service = serve_main(main, namespace="real", port=0)
    try:
        with openai.OpenAI(base_url=f"{service.function_url}/v1", api_key="unused",
                           max_retries=0, timeout=60) as client:
            text, finishes, facts = "", [], {}
            for chunk in client.chat.completions.create(model="llm", messages=QUESTION,
                                                        temperature=0, max_tokens=24,
                                                        stream=True):
                text += chunk.choices[0].delta.content or ""
                if chunk.choices[0].finish_reason:
                    finishes.append(chunk.choices[0].finish_reason)
                    facts = (chunk.model_extra or {}).get("x_chat", {})
    finally:
        service.stop()
    assert text.startswith(PREFIX), text
    assert text.count("capital of France") == 1, text
    assert "Paris" in text[len(PREFIX):], text
    assert len(finishes) == 1 and facts["backend"] == "worker", (finishes, facts)
