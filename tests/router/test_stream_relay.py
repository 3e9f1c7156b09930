"""Issue 25, item 14: the relay's per-chunk work. A backend's chunk that needs no change goes
out as the backend wrote it (not decoded and encoded again), one that spans lines is written on
one; and a stream's read limits run on one timer that still stops a stall, a first token that
never comes, and never turns the caller's own cancel into a backend's failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from router._stream_out import sse
from router._stream_read import (
    SseParser,
    StreamLimits,
    StreamStalled,
    check_chunk,
    read_chunks,
)

RAW = '{"id": "c1", "object": "chat.completion.chunk", "model": "m", "created": 1, ' \
      '"choices": [{"index": 0, "delta": {"content": "caf\\u00e9"}, "finish_reason": null}]}'


def test_an_unchanged_chunk_goes_out_as_the_backend_wrote_it():
    """GIVEN a backend's event WHEN it is checked and written again unchanged THEN the event
    carries the backend's very text (its spacing and escapes), and it parses to the same
    chunk."""
    [data] = SseParser().feed(f"data: {RAW}\n\n".encode())
    chunk = check_chunk(data, "worker")
    assert chunk is not None
    assert sse(chunk) == f"data: {RAW}\n\n"
    assert json.loads(sse(chunk)[6:]) == json.loads(RAW)


def test_a_chunk_that_spans_lines_is_written_on_one():
    """GIVEN an event whose JSON came on two `data:` lines WHEN it is written again THEN it is
    one `data:` line (re-encoded), so the client's SSE framing holds; and a chunk changed on
    the way (a plain dict) is encoded as it now is."""
    head, tail = RAW.split(", ", 1)
    [data] = SseParser().feed(f"data: {head},\ndata: {tail}\n\n".encode())
    chunk = check_chunk(data, "worker")
    assert chunk is not None
    event = sse(chunk)
    assert event.count("\n") == 2 and event.startswith("data: {") and event.endswith("\n\n")
    assert json.loads(event[6:]) == json.loads(RAW)
    assert json.loads(sse({**chunk, "id": "other"})[6:])["id"] == "other"


async def _paced(count: int, every_s: float, then_s: float) -> AsyncIterator[bytes]:
    """A backend body: `count` content chunks `every_s` apart, then silence for `then_s`."""
    for index in range(count):
        await asyncio.sleep(every_s)
        yield f"data: {RAW.replace('c1', f'c{index}')}\n\n".encode()
    await asyncio.sleep(then_s)


async def _read(body: AsyncIterator[bytes], limits: StreamLimits) -> list[object]:
    loop = asyncio.get_running_loop()
    now = loop.time()
    return [chunk async for chunk in read_chunks(body, "worker", limits, started=now,
                                                 end=now + 30)]


def test_a_stall_after_many_chunks_is_caught_in_its_limit():
    """GIVEN a backend that sends 40 chunks 5 ms apart, then nothing WHEN its stream is read
    with a 0.2 s stall limit THEN every chunk is read (none was cut by a stale limit), then
    the stall is raised, about 0.2 s after the last chunk."""
    got: list[object] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        body = _paced(40, 0.005, 5.0)
        try:
            async for chunk in read_chunks(body, "worker", StreamLimits(1.0, 0.2),
                                           started=loop.time(), end=loop.time() + 30):
                got.append(chunk)
                last = loop.time()
        except StreamStalled:
            return loop.time() - last
        raise AssertionError("no stall")

    waited = asyncio.run(run())
    assert len(got) == 40
    assert 0.19 <= waited < 0.6, waited


def test_no_first_token_in_time_is_a_stall():
    """GIVEN a backend that sends nothing WHEN its stream is read with a 0.1 s first-token
    limit THEN the stall is raised."""
    with pytest.raises(StreamStalled, match="no first token"):
        asyncio.run(_read(_paced(0, 0, 5.0), StreamLimits(0.1, 5.0)))


def test_the_callers_cancel_stays_a_cancel():
    """GIVEN a stream being read, whose backend is slow but within its limits WHEN the caller
    cancels the reading task (a client gone) after its first chunk THEN the task ends
    cancelled, not with a backend failure."""

    async def run() -> None:
        first = asyncio.Event()

        async def consume() -> None:
            loop = asyncio.get_running_loop()
            async for _ in read_chunks(_paced(3, 0.05, 5.0), "worker", StreamLimits(1.0, 0.3),
                                       started=loop.time(), end=loop.time() + 30):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
