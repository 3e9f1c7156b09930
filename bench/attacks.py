"""The hostile clients of bench/hostile.py, as asyncio coroutines over raw sockets.

Each comes from its own loopback address (all of 127/8 is loopback on Linux); the door groups
addresses by /24, so an attacker that stands for several hosts takes 127.N.0.x with one N per
group, and the honest client (127.0.0.1) is never in an attacker's group. Every attack returns
what it saw: how long its sockets stayed open, how many it opened, what it was answered.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from typing import Any

# How long an attacker holds a socket the server never closes (plain uvicorn's case).
HOLD_S = 20.0
# Linux's TCP states in TCP_INFO's first byte: the peer has closed (FIN or RST), though what
# it sent may still wait unread.
PEER_CLOSED = {7, 8, 9}  # CLOSE, CLOSE_WAIT, LAST_ACK


def group_address(group: int, host: int = 1) -> str:
    """An address in attacker group `group` (its own /24 of 127/8)."""
    return f"127.{group}.0.{host}"


async def _open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _held(reader: asyncio.StreamReader, opened: float, limit_s: float,
                answers: Counter[str] | None = None) -> float:
    """Seconds from connect until the service closed the connection (or `limit_s`); the
    status of its first answer goes into `answers`."""
    first = b""
    try:
        async with asyncio.timeout(limit_s):
            while chunk := await reader.read(65_536):
                first = first or chunk
    except (TimeoutError, ConnectionError):
        pass
    if answers is not None:
        answers[first[9:12].decode("latin-1") or "none"] += 1
    return time.monotonic() - opened


async def _drip(writer: asyncio.StreamWriter, body: bytes) -> None:
    for byte in body:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(1.0)  # the attack's pace, not a synchronisation


async def _one(port: int, source: str, payload: bytes, drip: bytes, hold_s: float,
               answers: Counter[str] | None = None) -> float:
    opened = time.monotonic()
    try:
        reader, writer = await _open(port, source)
    except OSError:
        return 0.0
    try:
        if payload:
            writer.write(payload)
        dripper = asyncio.create_task(_drip(writer, drip)) if drip else None
        held = await _held(reader, opened, hold_s, answers)
        if dripper is not None:
            dripper.cancel()
        return held
    finally:
        writer.close()


async def wave(port: int, count: int, payload: bytes, *, drip: bytes = b"",
               source: str = "127.0.0.2", hold_s: float = HOLD_S) -> list[float]:
    """Open `count` connections at once, send `payload` on each (then `drip`, a byte a
    second), and return how long each stayed open (`hold_s` at most)."""
    return list(await asyncio.gather(*(_one(port, source, payload, drip, hold_s)
                                       for _ in range(count))))


async def flood(port: int, slots: list[tuple[str, bytes, bytes]], seconds: float
                ) -> dict[str, Any]:
    """Keep one connection open in each slot (source, payload, drip) for `seconds`: whenever
    the service closes one, the slot opens the next (an attacker that tops up)."""
    end = time.monotonic() + seconds
    held: list[float] = []
    answers: Counter[str] = Counter()

    async def slot(source: str, payload: bytes, drip: bytes) -> None:
        while (left := end - time.monotonic()) > 0:
            took = await _one(port, source, payload, drip, left, answers)
            held.append(took)
            if took < 0.01:
                await asyncio.sleep(0.05)  # refused at once: the attacker's own back-off

    await asyncio.gather(*(slot(*s) for s in slots))
    return {"connections": len(held), "answers": dict(answers), "held": held}


async def slow_readers(port: int, slots: list[tuple[str, bytes]], seconds: float
                       ) -> dict[str, Any]:
    """Keep one connection in each slot (source, a complete request) for `seconds`: send the
    request, never read a byte of the answer, and when the service closes the connection,
    open the next (slow readers that top up their slots)."""
    end = time.monotonic() + seconds
    held: list[float] = []

    async def slot(source: str, request: bytes) -> None:
        while end - time.monotonic() > 0:
            opened = time.monotonic()
            try:
                _, writer = await _open(port, source)
            except OSError:
                await asyncio.sleep(0.05)  # the attacker's own back-off
                continue
            transport = writer.transport
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()  # the answer stays in the kernel, unread
            sock = writer.get_extra_info("socket")
            writer.write(request)
            while end - time.monotonic() > 0 and sock.getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] not in PEER_CLOSED:
                await asyncio.sleep(0.1)  # polling the socket's state, not a synchronisation
            held.append(time.monotonic() - opened)
            transport.abort()

    await asyncio.gather(*(slot(*s) for s in slots))
    return {"connections": len(held), "held": held}


async def pipelined(port: int, request: bytes, count: int, seconds: float) -> dict[str, Any]:
    """One connection that sends `count` requests in one go and reads the answers as they
    come, for `seconds` at most."""
    reader, writer = await _open(port, "127.9.0.1")
    writer.write(request * count)
    got, end = 0, time.monotonic() + seconds
    tail = b""
    try:
        while got < count and (left := end - time.monotonic()) > 0:
            async with asyncio.timeout(left):
                chunk = await reader.read(1 << 20)
            if not chunk:
                break
            got += (tail + chunk).count(b"HTTP/1.1 ")
            tail = chunk[-8:]
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
    return {"sent": count, "answered": got}


async def big_headers(port: int, path: str) -> dict[str, Any]:
    """One 64 MB header, ten 16 MB headers and 100,000 header fields, at once; how much of
    each was sent before the service answered (or closed), and what it answered."""
    async def one(source: str, head: bytes, chunk: bytes, total: int) -> tuple[int, str]:
        reader, writer = await _open(port, source)
        sent = 0
        answer = asyncio.create_task(reader.read(4_096))
        try:
            writer.write(head)
            while sent < total and not answer.done():
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            async with asyncio.timeout(10):
                first = await answer
        except (TimeoutError, ConnectionError):
            first = answer.result() if answer.done() and not answer.exception() else b""
        finally:
            answer.cancel()
            writer.close()
        return sent, first[9:12].decode("latin-1") or "none"

    start = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n".encode()
    runs = [one(group_address(10), start + b"x-big: ", b"v" * 65_536, 64 << 20)]
    runs += [one(group_address(11, host), start + b"x-big: ", b"v" * 65_536, 16 << 20)
             for host in range(1, 11)]
    runs.append(one(group_address(12), start, b"".join(
        b"x-h%d: v\r\n" % i for i in range(1_000)), 100 * 9_000))
    results = await asyncio.gather(*runs)
    meant = (64 << 20) + 10 * (16 << 20) + 100 * 9_000
    return {"sent_mb": round(sum(sent for sent, _ in results) / (1 << 20), 1),
            "meant_mb": round(meant / (1 << 20), 1),
            "answers": dict(Counter(status for _, status in results))}
