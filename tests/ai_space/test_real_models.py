"""The worker's real default models, loaded from their pip packages (no Hub access)."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import openai
import pytest
from pydantic import SecretStr

from ai_space import Settings
from tests.ai_space.conftest import TOKEN, serve


@pytest.mark.slow
def test_packaged_smollm2_and_minilm_answer_sensibly(
        make_client: Callable[..., openai.OpenAI]) -> None:
    """GIVEN the packaged defaults (pkg:smollm2 GGUF, pkg:minilm) on the transformers engine
    (the llama.cpp engine has its own tests in test_llama_engine.py) WHEN serving THEN a sentence's
    embedding is closer to its paraphrase than to an unrelated sentence, matches the known
    sentence-transformers vector, and a greedy chat reply is non-empty English text."""
    settings = Settings(api_token=SecretStr(TOKEN), max_tokens=48, engine="transformers")
    assert (settings.model_id, settings.embedding_model_id) == ("pkg:smollm2", "pkg:minilm")
    with serve(settings) as (server, _):
        client = make_client(server.url)
        vectors = np.array([d.embedding for d in client.embeddings.create(model="e", input=[
            "A man is playing a guitar on stage.",
            "Someone performs music with a guitar in front of an audience.",
            "The stock market fell sharply on Tuesday.",
        ]).data])
        hello = client.embeddings.create(model="e", input="hello world").data[0].embedding
        reply = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", temperature=0, max_tokens=48,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3, (similar, unrelated)
    # sentence-transformers' all-MiniLM-L6-v2 gives these leading values for "hello world".
    np.testing.assert_allclose(hello[:3], [-0.034477, 0.031023, 0.006735], atol=1e-4)
    text = reply.choices[0].message.content or ""
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 3, text
    assert sum(c.isascii() for c in text) / len(text) > 0.95, text
    assert "Paris" in text, text
