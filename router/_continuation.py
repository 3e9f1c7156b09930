"""What a client already holds of a streamed answer, and how a fallback's stream is fitted
after it when the first backend failed mid-answer.

Three ways on, in the order tried:
- continue: the fallback gets the partial answer as a trailing `assistant` message (a prefill;
  vLLM, TGI and ai_space continue it) and only the tokens still owed; its chunks follow as is.
- replay: a fallback that refuses prefills answers again in full. While its answer repeats
  what the client already has, that part is held back; only what extends it is relayed. Where
  it departs from it, `RESTART_MARKER` and its whole answer so far go out, then the rest.
- restart: a tool-call delta already sent cannot be continued, so the fallback's answer comes
  in full after the marker.
"""

from __future__ import annotations

from typing import Any

from router._stream_read import content_of, delta_of

RESTART_MARKER = "\n\n[The answer was interrupted; it restarts here in full.]\n\n"


def with_content(like: dict[str, Any], text: str) -> dict[str, Any]:
    """A chunk shaped like `like` whose only choice carries `text` (and like's finish)."""
    choices = like.get("choices") or [{}]
    finish = choices[0].get("finish_reason")
    delta = {**delta_of(like), "content": text}
    delta.pop("role", None)
    return {**like, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class Sent:
    """What reached the client: its text (since the last marker), whether a tool-call delta
    did, and how many token-bearing chunks (a chunk is about one token)."""

    def __init__(self) -> None:
        self.text = ""
        self.tool_calls = False
        self.tokens = 0

    @property
    def anything(self) -> bool:
        """Whether any content or tool call reached the client."""
        return bool(self.text) or self.tool_calls

    def record(self, chunk: dict[str, Any]) -> None:
        """Count one chunk on its way to the client."""
        delta = delta_of(chunk)
        text = content_of(chunk)
        if text == RESTART_MARKER:
            return  # ours, not the answer's
        self.text += text
        self.tool_calls = self.tool_calls or bool(delta.get("tool_calls"))
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            self.tokens += 1

    def owed(self, max_tokens: int) -> int:
        """The tokens a continuation may still use (at least one)."""
        return max(1, max_tokens - self.tokens)

    def restarted(self) -> None:
        """The marker went out: what follows is a new answer."""
        self.text = ""
        self.tool_calls = False


class Fitter:
    """Fits one fallback's chunks after what the client has: `fit` returns what to relay."""

    def __init__(self, sent: Sent, *, replay: bool) -> None:
        self.sent = sent
        self.replay = replay  # False: restart after the marker at the first progress
        self.had = sent.text
        self.new = ""  # the fallback's own text so far
        self.settled = False  # matched or diverged: from then on, chunks pass as they are

    def fit(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks to relay for one chunk of the fallback."""
        if self.settled:
            return [chunk]
        delta = delta_of(chunk)
        progress = delta.get("content") or delta.get("tool_calls") \
            or delta.get("reasoning_content")
        if not self.replay:
            if not progress:
                return [chunk]
            return self._restart(chunk, "")
        if delta.get("tool_calls"):  # no text to compare with: the new answer is its own
            return self._restart(chunk, self.new)
        self.new += content_of(chunk)
        if self.had.startswith(self.new):
            # Still repeating what the client has: hold the text back, keep anything else.
            if (chunk.get("choices") or [{}])[0].get("finish_reason") or \
                    delta.get("reasoning_content"):
                return [with_content(chunk, "")]
            return []
        if self.new.startswith(self.had):
            self.settled = True
            return [with_content(chunk, self.new[len(self.had):])]
        return self._restart(chunk, self.new)

    def _restart(self, chunk: dict[str, Any], text_so_far: str) -> list[dict[str, Any]]:
        self.settled = True
        self.sent.restarted()
        marker = with_content(chunk, RESTART_MARKER)
        marker["choices"][0]["finish_reason"] = None
        marker["choices"][0]["delta"] = {"content": RESTART_MARKER}
        if text_so_far:
            return [marker, with_content(chunk, text_so_far)]
        return [marker, chunk]
