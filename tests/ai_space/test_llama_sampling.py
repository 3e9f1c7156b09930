"""Batch sampling for the llama.cpp engine: one numpy pass over a step's logits, per-request
seeds, and the same tokens as choosing for each request on its own."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from openai import Stream
from openai.types.chat import ChatCompletionChunk
from pydantic import SecretStr

from ai_space import Finished, Hooks, Settings
from ai_space.generation import SamplingParams
from ai_space.llama.sampling import Sampler, pick_batch, pick_from
from tests.ai_space.conftest import TOKEN, serve

VOCAB = 49_152  # SmolLM2's vocabulary: the size the engine samples from


def _logits(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, VOCAB)) * 3.0).astype(np.float32)
    logits[0, 17] = 60.0  # one sharply peaked row (a nucleus of one token)
    # A flat row: one token ahead of 49,151 just below the nucleus pre-filter, so the
    # filtered candidates hold less than top_p and the whole vocabulary must be sorted.
    logits[1] = np.log(0.9e-4)
    logits[1, 5] = 0.0
    logits[2, :] = -np.inf  # every token masked: nothing to sample, argmax decides
    return logits


MIXED = [
    SamplingParams(8, temperature=1.0, top_p=0.5, seed=1),
    SamplingParams(8, temperature=1.0, top_p=0.9, seed=2),
    SamplingParams(8, temperature=0.8, seed=3),
    SamplingParams(8, temperature=0.0),
    SamplingParams(8, temperature=1.0, seed=4),
    SamplingParams(8, temperature=0.7, top_p=0.9, seed=5),
    SamplingParams(8, temperature=1.3, top_p=0.95, seed=6),
    SamplingParams(8, temperature=5e-324, seed=7),
    SamplingParams(8, temperature=1e-40, top_p=5e-324, seed=8),
    SamplingParams(8, temperature=0.3, top_p=0.2, seed=9),
    SamplingParams(8, temperature=2.0, seed=10),
    SamplingParams(8, temperature=0.0, top_p=0.5),
    SamplingParams(8, temperature=1.0, top_p=0.999, seed=11),
    SamplingParams(8, temperature=0.5, seed=12),
    SamplingParams(8, temperature=1.0, seed=None),
    SamplingParams(8, temperature=0.9, top_p=0.7, seed=13),
]


def test_a_batch_pass_picks_what_each_request_would_pick_alone() -> None:
    """GIVEN 16 requests with mixed settings (greedy, temperature, top-p, vanishing
    temperatures, a flat and a fully masked row) and seeds WHEN their tokens are picked in one
    batch pass for 40 steps THEN every token equals the per-request reference's with the same
    seed, so seeds reproduce the answers they gave before batching."""
    batch = [Sampler(p) for p in MIXED]
    alone = [Sampler(p) for p in MIXED]
    # An unseeded request draws from fresh entropy: give the reference the same state.
    alone[14].rng.bit_generator.state = batch[14].rng.bit_generator.state
    for step in range(40):
        logits = _logits(len(MIXED), step)
        picked = pick_batch(logits, batch)
        expected = [pick_from(logits[i], p, alone[i].rng) for i, p in enumerate(MIXED)]
        assert picked == expected, f"step {step}"
    # The sampled rows really sampled: the top-p 0.999 request left its argmax at least once.
    assert len({pick_batch(_logits(16, s), batch)[12] for s in range(20)}) > 1


def test_a_requests_tokens_do_not_depend_on_its_batch() -> None:
    """GIVEN a seeded request WHEN it is sampled alone, and beside 15 others in different
    positions THEN it draws the same tokens either way."""
    params = SamplingParams(8, temperature=0.9, top_p=0.9, seed=42)
    solo, crowded = Sampler(params), Sampler(params)
    others = [Sampler(p) for p in MIXED[:15]]
    for step in range(20):
        logits = _logits(16, 100 + step)
        row = logits[3:4]
        position = step % 16
        batch = [*others[:position], crowded, *others[position:]]
        rows = np.concatenate([logits[:position], row, logits[position:15]])
        assert pick_batch(rows, batch)[position] == pick_batch(row, [solo])[0]


def test_the_batch_is_checked_against_its_requests() -> None:
    """GIVEN logits for 2 requests WHEN 3 samplers are given THEN ValueError, never a token
    from another request's row."""
    with pytest.raises(ValueError, match="2 rows of logits for 3 requests"):
        pick_batch(np.zeros((2, VOCAB), np.float32), [Sampler(SamplingParams(4))] * 3)


@pytest.mark.slow
def test_seeded_requests_answer_the_same_alone_and_in_one_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        make_client: Callable[..., openai.OpenAI]) -> None:
    """GIVEN the llama.cpp engine on the packaged SmolLM2 WHEN six seeded requests (top-p,
    temperature, greedy) are held and then decoded together in one batch THEN each answer
    equals the one the same request gets alone, and all six were prefilled in one step."""
    monkeypatch.setenv("GGUF_CACHE", str(tmp_path))
    finished: queue.Queue[Finished] = queue.Queue()
    step = threading.Event()
    step.set()
    settings = Settings(api_token=SecretStr(TOKEN), engine="llama.cpp", embedding_model_id=None,
                        max_concurrency=8, n_ctx=2048, max_input_tokens=1024, n_threads=1)
    asks: list[dict[str, Any]] = [
        {"temperature": 0.9, "top_p": 0.9, "seed": 1}, {"temperature": 1.0, "seed": 2},
        {"temperature": 0.7, "top_p": 0.5, "seed": 3}, {"temperature": 0},
        {"temperature": 1.3, "top_p": 0.95, "seed": 4}, {"temperature": 0.9, "top_p": 0.9,
                                                          "seed": 1}]
    with serve(settings, Hooks(step_gate=step, on_finish=finished.put)) as (server, _):
        client = make_client(server.url)

        def stream(extra: dict[str, Any]) -> Stream[ChatCompletionChunk]:
            return client.chat.completions.create(  # type: ignore[no-any-return]
                model="m", max_tokens=16, stream=True,
                messages=[{"role": "user", "content": "Tell me about the sea."}], **extra)

        alone = [_text(iter(stream(extra))) for extra in asks]
        for _ in asks:
            finished.get(timeout=60)
        step.clear()
        streams = [iter(stream(extra)) for extra in asks]
        for s in streams:
            next(s)  # the role chunk: the request is queued
        step.set()
        together = [_text(s) for s in streams]
        sizes = [finished.get(timeout=60).batch_size for _ in asks]
    assert together == alone
    assert alone[0] == alone[5] and len(set(alone)) > 2
    assert sizes == [len(asks)] * len(asks)


def _text(chunks: Iterator[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
