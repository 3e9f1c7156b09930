"""A prefill: a chat whose last message is the assistant's own, continued rather than answered.

The router's mid-stream failover sends the partial answer this way (DESIGN §4); every engine
continues it as vLLM and TGI do. Apart from the engines (ai_space/engine.py) and the model
loaders (ai_space/models/), which both use it.
"""

from __future__ import annotations


def continues_final(turns: list[dict[str, str]]) -> bool:
    """Whether the prompt continues its last message: a non-empty trailing assistant message
    is a prefill, continued the way vLLM and TGI continue one (transformers'
    `continue_final_message`), not closed and answered by a new turn."""
    return bool(turns) and turns[-1]["role"] == "assistant" and bool(turns[-1]["content"])
