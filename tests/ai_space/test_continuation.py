"""A trailing assistant message is continued, not answered anew (issue 18, item 2).

llama-server continues one itself (its prefill-assistant default), tested in
test_llama_engine.py; the real worker's continuation through the router is in
tests/service/test_stream_continuation_real.py.
"""

from __future__ import annotations

from ai_space.prefill import continues_final


def test_only_a_non_empty_trailing_assistant_message_is_continued() -> None:
    """GIVEN chats ending with a user turn, an empty assistant turn and a real prefill WHEN
    asked whether to continue THEN only the prefill is continued."""
    user = {"role": "user", "content": "Hi"}
    assert not continues_final([user])
    assert not continues_final([user, {"role": "assistant", "content": ""}])
    assert continues_final([user, {"role": "assistant", "content": "Hello"}])
