"""Embeddings through the real openai client, on a tiny BERT."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import numpy as np
import openai
import pytest

from ai_space import Settings
from tests.ai_space.conftest import TOKEN, serve
from tests.support.loopback import LoopbackServer

SENTENCES = ["hello world", "the quick brown fox jumps over the lazy dog", "paris"]


@pytest.fixture
def client(tiny_server: LoopbackServer, make_client: Callable[..., openai.OpenAI]
           ) -> openai.OpenAI:
    """An openai client pointed at the tiny server."""
    return make_client(tiny_server.url)


def test_embeddings_are_unit_vectors_in_order(client: openai.OpenAI) -> None:
    """GIVEN three sentences WHEN embedded (the client asks for base64 by default) THEN three
    unit-length vectors of the model's width come back, indexed in order, with usage."""
    answer = client.embeddings.create(model="e", input=SENTENCES)
    assert [d.index for d in answer.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in answer.data])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert answer.usage.prompt_tokens > 0


def test_float_and_base64_formats_agree(client: openai.OpenAI) -> None:
    """GIVEN one sentence WHEN embedded as float and as base64 THEN the vectors are equal."""
    as_float = client.embeddings.create(model="e", input="hello world", encoding_format="float")
    as_b64 = client.embeddings.create(model="e", input="hello world", encoding_format="base64")
    # Asked for explicitly, base64 comes back undecoded: little-endian float32 bytes.
    raw = base64.b64decode(str(as_b64.data[0].embedding))
    np.testing.assert_allclose(as_float.data[0].embedding, np.frombuffer(raw, dtype="<f4"),
                               atol=1e-7)


def test_padding_does_not_change_a_vector(client: openai.OpenAI) -> None:
    """GIVEN a short sentence WHEN embedded alone and beside a long one THEN the vectors are
    equal: the mean pools over real tokens only, as sentence-transformers does."""
    alone = client.embeddings.create(model="e", input=["paris"]).data[0].embedding
    padded = client.embeddings.create(model="e", input=SENTENCES).data[2].embedding
    np.testing.assert_allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("body", [{"input": ""}, {"input": []}, {"input": [1, 2, 3]},
                                  {"input": "x", "encoding_format": "int8"}, {}])
def test_bad_inputs_get_400(tiny_server: LoopbackServer, body: dict[str, object]) -> None:
    """GIVEN an empty, token-id, or missing input WHEN posted THEN a JSON 400."""
    response = httpx.post(f"{tiny_server.url}/v1/embeddings", json=body,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_no_embedding_model_gives_404(tiny_settings: Settings,
                                      make_client: Callable[..., openai.OpenAI]) -> None:
    """GIVEN EMBEDDING_MODEL_ID=none WHEN embeddings are asked THEN 404 model_not_found, and
    /v1/models lists the chat model only."""
    settings = tiny_settings.model_copy(update={"embedding_model_id": None})
    with serve(settings) as (server, _):
        client = make_client(server.url)
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="e", input="hello")
        assert [m.id for m in client.models.list()] == ["tiny-llama"]
        assert httpx.get(f"{server.url}/health").json()["embedding_model"] is None


def test_fields_that_cannot_be_honoured_are_refused_by_name(client: openai.OpenAI) -> None:
    """GIVEN a model 32 wide WHEN `dimensions` asks for 16, or an unknown field is sent THEN
    BadRequestError with code unsupported_parameter naming the field; WHEN `dimensions` is
    the model's own width, or `user` is sent THEN the vectors come back."""
    for extra, param in (({"dimensions": 16}, "dimensions"), ({"truncate": True}, "truncate")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="e", input="paris", extra_body=extra)
        assert (caught.value.code, caught.value.param) == ("unsupported_parameter", param)
    answer = client.embeddings.create(model="e", input="paris", dimensions=32, user="u-1")
    assert len(answer.data[0].embedding) == 32
