"""A trailing assistant message is continued, not answered anew (issue 18, item 2), and both
engines render it the same way. The real worker's continuation through the router is in
tests/service/test_stream_continuation_real.py."""

from __future__ import annotations

import pytest

from ai_space.prefill import continues_final, cut_after_final


def test_only_a_non_empty_trailing_assistant_message_is_continued() -> None:
    """GIVEN chats ending with a user turn, an empty assistant turn and a real prefill WHEN
    asked whether to continue THEN only the prefill is continued."""
    user = {"role": "user", "content": "Hi"}
    assert not continues_final([user])
    assert not continues_final([user, {"role": "assistant", "content": ""}])
    assert continues_final([user, {"role": "assistant", "content": "Hello"}])


def test_the_rendered_chat_stops_where_the_prefill_stops() -> None:
    """GIVEN a rendered chat whose template closes the last turn (and one that trims its
    trailing spaces) WHEN cut after the final message THEN the end-of-turn marker is gone and the
    text ends with the prefill; a prefill the template does not show is refused."""
    rendered = "<|im_start|>assistant\nThe capital is<|im_end|>\n"
    assert cut_after_final(rendered, "The capital is") == "<|im_start|>assistant\nThe capital is"
    # The template trimmed the prefill's trailing spaces: the cut follows the text it shows.
    assert cut_after_final(rendered, "The capital is  ").endswith("The capital is")
    with pytest.raises(ValueError, match="does not appear"):
        cut_after_final(rendered, "something else")


@pytest.mark.slow
def test_both_engines_render_a_prefill_alike() -> None:
    """GIVEN the packaged SmolLM2 GGUF WHEN a chat ending in an assistant prefill is formatted by
    the llama.cpp engine THEN its token ids equal transformers' apply_chat_template with
    continue_final_message=True (what the transformers engine sends), and end with the
    prefill's own tokens, not an end-of-turn."""
    from transformers import AutoTokenizer

    from ai_space.llama.model import GGUFChatModel
    from ai_space.models.packaged import resolve

    source = resolve("pkg:smollm2", None)
    assert source.gguf_path is not None
    chat = GGUFChatModel(source.gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    turns = [{"role": "user", "content": "What is the capital of France?"},
             {"role": "assistant", "content": "The capital of France is"}]
    try:
        ours = chat.prompt_ids(turns)
        theirs = list(tokenizer.apply_chat_template(turns, tokenize=True,
                                                    add_generation_prompt=False,
                                                    continue_final_message=True,
                                                    return_dict=False))
        assert ours == theirs
        assert str(tokenizer.decode(ours)).endswith("The capital of France is")
    finally:
        chat.close()
