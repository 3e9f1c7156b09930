"""Assembling a whole answer from llama-server's chunks, and cutting a repeated prefill."""

from __future__ import annotations

from typing import Any

from ai_space.llama.assemble import Answer, PrefillCut


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "model": "m", "created": 7, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}


def test_tool_call_pieces_become_one_call_per_index() -> None:
    """GIVEN streamed tool-call pieces (the first with id and name, the rest adding arguments)
    and a usage chunk WHEN assembled THEN one call per index with the arguments joined, no
    text content, the finish reason and the token counts."""
    answer = Answer()
    for event in (
            _chunk({"role": "assistant", "content": None}),
            _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"ci"}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}}]}),
            _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                    "function": {"name": "now", "arguments": "{}"}}]}),
            _chunk({}, "tool_calls"),
            {"id": "chatcmpl-1", "model": "m", "created": 7, "choices": [],
             "usage": {"prompt_tokens": 20, "completion_tokens": 9}}):
        answer.note(event)
    body = answer.completion()
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}}]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
    assert answer.outcome() == "tool_calls" and answer.first is not None


def test_text_and_logprobs_are_joined_and_an_unended_answer_is_cancelled() -> None:
    """GIVEN text chunks with log-probabilities WHEN assembled THEN the text and the entries
    join in order; an answer with no finish reason counts as cancelled, one marked failed as
    an error."""
    answer = Answer()
    answer.note(_chunk({"content": "Hel"}, logprobs={"content": [{"token": "Hel"}]}))
    answer.note(_chunk({"content": "lo"}, logprobs={"content": [{"token": "lo"}]}))
    assert answer.outcome() == "cancelled"
    answer.note(_chunk({}, "stop"))
    body = answer.completion()
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert [e["token"] for e in body["choices"][0]["logprobs"]["content"]] == ["Hel", "lo"]
    answer.failed = True
    assert answer.outcome() == "error"


def test_a_repeated_prefill_is_cut_once_however_it_is_split() -> None:
    """GIVEN a continued message WHEN the engine repeats it at the start of its answer, whole
    or split over deltas, with or without the trailing space the template trims THEN only the
    new text is left; an answer that does not repeat it is passed on untouched."""
    cut = PrefillCut("The capital of France is")
    assert cut("The capital of France is Paris") == " Paris"
    assert cut(" and more") == " and more"
    split = PrefillCut("The capital is ")
    assert [split(t) for t in ("The cap", "ital is", " Paris", ".")] == ["", "", "Paris", "."]
    other = PrefillCut("Hello")
    assert other("Bonjour") == "Bonjour" and other("Hello") == "Hello"
