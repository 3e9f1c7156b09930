"""bench/crowd.py's counting and its rows, against a real server on loopback whose streams end
in each way the bench must tell apart: whole, short, or refused."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from bench import crowd
from tests.support.loopback import LoopbackServer

CHUNK = b'data: {"x_sent": 1}\n\n'


class ThreeWays:
    """An ASGI app whose requests take turns: a whole stream, a short one, a 503."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.turn = itertools.count()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer one request in its turn's way."""
        if scope["type"] != "http":
            await crowd.sink_app(scope, receive, send)  # the server's start and stop
            return
        way = next(self.turn) % 3
        if way == 2:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(self.tokens + 1 if way == 0 else 2):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def test_the_crowd_counts_whole_streams_and_names_why_the_others_are_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN 6 streams of 3 tokens, served whole, short and refused in turn WHEN the crowd runs
    THEN 2 complete and the others are named (2 ended after 2, 2 status 503), and its row says
    so."""
    monkeypatch.setattr(crowd, "IDLE_CONNECTIONS", 2)
    monkeypatch.setattr(crowd, "CONCURRENT_STREAMS", 6)
    monkeypatch.setattr(crowd, "STREAM_TOKENS", 3)
    with LoopbackServer(ThreeWays(tokens=3)) as server:
        got = asyncio.run(crowd.crowd(server.url + "/fn"))
    assert got["complete"] == 2 and len(got["firsts"]) == 2
    assert got["incomplete"] == {"ended after 2": 2, "status 503": 2}
    fig = {"rounds": 1, "load": "0", "profiled": "", "profile": {},
           "configs": {"all on": {**got, "worst_round_p99": got["ttft_p99"],
                                  "cpu_s_per_round": 0.1, "wall_s_per_round": got["wall_s"]}}}
    [row] = crowd.rows(fig)
    assert "| 2/6 complete (not: 2 ended after 2, 2 status 503);" in row
