"""Fixtures for the model-server tests: tiny models on disk, and real servers on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import SecretStr
from transformers.utils import logging as hf_logging

from ai_space import Hooks, Settings, create_app
from tests.ai_space.tiny_models import build_chat_model, build_embedding_model
from tests.support.loopback import LoopbackServer

TOKEN = "tok-4f9a2c7e1b3d5a6c"
LOAD_TIMEOUT_S = 120.0


@pytest.fixture(scope="session", autouse=True)
def _quiet_progress_bars() -> None:
    # tqdm bars from save/load are noise in test output; the server keeps them in production.
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama chat model and tokenizer, saved once per session."""
    return build_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT encoder and tokenizer, saved once per session."""
    return build_embedding_model(tmp_path_factory.mktemp("tiny-embed"))


@pytest.fixture(scope="session")
def tiny_settings(tiny_chat_dir: Path, tiny_embed_dir: Path) -> Settings:
    """Settings for a server on the tiny models, with a token."""
    return Settings(api_token=SecretStr(TOKEN), model_id=str(tiny_chat_dir),
                    embedding_model_id=str(tiny_embed_dir), served_model_name="tiny-llama",
                    max_concurrency=4, max_queue=8, max_tokens=64, max_body_bytes=64_000)


@contextmanager
def serve(settings: Settings, hooks: Hooks | None = None, *,
          wait: bool = True) -> Iterator[tuple[LoopbackServer, Any]]:
    """Run the real app under uvicorn on loopback; optionally wait until loading has ended."""
    app = create_app(settings, hooks)
    with LoopbackServer(app) as server:
        if wait:
            assert app.state.host.wait_loaded(LOAD_TIMEOUT_S), "models did not load in time"
            assert app.state.host.status == "ready"
        yield server, app


@pytest.fixture(scope="module")
def tiny_server(tiny_settings: Settings) -> Iterator[LoopbackServer]:
    """One ready server on the tiny models, shared by a test module."""
    with serve(tiny_settings) as (server, _):
        yield server


@pytest.fixture
def make_client() -> Iterator[Callable[..., openai.OpenAI]]:
    """A factory of openai clients for a server URL; every client is closed after the test."""
    made: list[openai.OpenAI] = []

    def make(url: str, api_key: str = TOKEN) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        client.close()
