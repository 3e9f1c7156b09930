"""Token picking and text assembly, on the tiny tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from ai_space.generation import SamplingParams, TextTracker, pick_next


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_dir: Path) -> Any:
    """The tiny byte-level tokenizer."""
    return AutoTokenizer.from_pretrained(tiny_chat_dir)


def _run(tokenizer: Any, text: str, stop: tuple[str, ...]) -> tuple[list[str], TextTracker]:
    tracker = TextTracker(tokenizer, stop)
    deltas = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        deltas.append(tracker.push(token))
        if tracker.stopped:
            break
    deltas.append(tracker.flush())
    return deltas, tracker


def test_deltas_rebuild_the_text_including_multibyte(tokenizer: Any) -> None:
    """GIVEN text with multi-byte characters split over byte tokens WHEN pushed token by token
    THEN no delta holds a broken character and together they rebuild the text."""
    text = "héllo wörld, ça va? 日本 ✓"
    deltas, _ = _run(tokenizer, text, ())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_stop_string_across_tokens_is_cut_and_never_sent(tokenizer: Any) -> None:
    """GIVEN a stop string that spans several tokens WHEN generation reaches it THEN the text
    before it is sent, nothing of the stop string is, and the tracker reports stopped."""
    deltas, tracker = _run(tokenizer, "the quick brown fox jumps", ("brown f",))
    assert "".join(deltas) == "the quick "
    assert tracker.stopped


def test_text_that_only_looks_like_a_stop_string_is_released(tokenizer: Any) -> None:
    """GIVEN stop 'brownie' WHEN the text has 'brown fox' THEN the held 'brown' is sent."""
    deltas, tracker = _run(tokenizer, "the quick brown fox", ("brownie",))
    assert "".join(deltas) == "the quick brown fox"
    assert not tracker.stopped


def test_greedy_picks_the_largest_logit() -> None:
    """GIVEN temperature 0 WHEN picking THEN the argmax."""
    assert pick_next(torch.tensor([0.1, 3.0, 2.0]), SamplingParams(4, temperature=0), None) == 1


def test_top_p_keeps_only_the_head_of_the_distribution() -> None:
    """GIVEN one token holding 99% of the mass and top_p 0.5 WHEN sampling many times THEN only
    that token is ever picked."""
    logits = torch.tensor([10.0, 5.0, 5.0, 0.0])
    params = SamplingParams(4, temperature=1.0, top_p=0.5)
    generator = torch.Generator().manual_seed(0)
    assert {pick_next(logits, params, generator) for _ in range(200)} == {0}


def test_seeded_sampling_repeats() -> None:
    """GIVEN the same seed WHEN sampling twice THEN the same sequence."""
    logits = torch.zeros(50)
    params = SamplingParams(4, temperature=1.0)
    runs = [[pick_next(logits, params, torch.Generator().manual_seed(3)) for _ in range(5)]
            for _ in range(2)]
    assert runs[0] == runs[1]
