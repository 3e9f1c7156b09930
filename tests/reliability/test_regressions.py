"""The bugs this suite found, each pinned by the smallest case that showed it.

Each was found by the fault matrix, the load test or the fuzzers, and fixed in router/ or
ai_space/; the README's reliability section lists them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from router.gateway import Gateway
from tests.reliability.conftest import Ledger

Main = Callable[[dict[str, Any], Any], dict[str, Any]]


def test_gateway_takes_a_burst_of_connections(main: Main, ledger: Ledger) -> None:
    """GIVEN the gateway WHEN 150 connections arrive at once THEN every one is answered.

    It listened with socketserver's backlog of 5: most of a burst of 200 was reset by the
    kernel (httpx.ReadError) before any handler ran."""
    gw = Gateway(main, port=0).start()

    async def burst(n: int) -> Counter[Any]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            async def one() -> int | str:
                try:
                    response = await client.get(gw.function_url + "/health")
                except httpx.TransportError as exc:
                    return type(exc).__name__
                ledger.answer(response.status_code, response.headers, response.content)
                return response.status_code

            return Counter(await asyncio.gather(*(one() for _ in range(n))))

    try:
        assert asyncio.run(burst(150)) == {200: 150}
    finally:
        gw.stop()
