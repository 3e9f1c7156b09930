"""Talking to one llama-server over its unix socket, with its current key.

An httpx client is bound to the event loop that made it, so one is kept per loop. The socket
path stays the same across restarts (only the key changes), so a client outlives a restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ai_space.errors import APIError, BadRequest, NotReady
from ai_space.llama.process import EngineProcess

# No read timeout: a generation ends when the engine says so, or when the client hangs up.
_TIMEOUT = httpx.Timeout(None, connect=5.0)


class EngineDown(NotReady):
    """The engine process is not running (it died and is being restarted)."""

    code = "model_error"


class EngineClient:
    """Async HTTP to one supervised engine."""

    def __init__(self, engine: EngineProcess, connections: int) -> None:
        self.engine = engine
        self._limits = httpx.Limits(max_connections=connections,
                                    max_keepalive_connections=connections)
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    def client(self) -> httpx.AsyncClient:
        """The client for the running event loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.engine.socket), limits=self._limits)
            client = httpx.AsyncClient(transport=transport, base_url="http://engine",
                                       timeout=_TIMEOUT)
            self._clients = {**{k: v for k, v in self._clients.items() if not k.is_closed()},
                             loop: client}
        return client

    def headers(self) -> dict[str, str]:
        """The engine's key for this start."""
        return {"Authorization": f"Bearer {self.engine.key}"}

    def check_alive(self) -> None:
        """Raise EngineDown (a 503 the router fails over on) unless the engine is serving."""
        if not self.engine.alive:
            raise EngineDown(f"the {self.engine.name} engine is restarting", retry_after=5)

    async def post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST JSON and return the JSON answer; engine errors become our errors."""
        self.check_alive()
        try:
            response = await self.client().post(path, json=payload, headers=self.headers())
        except httpx.TransportError:
            raise EngineDown(f"the {self.engine.name} engine is restarting",
                             retry_after=5) from None
        if response.status_code != 200:
            raise engine_error(response.status_code, response.content)
        return response.json()

    async def aclose(self) -> None:
        """Close the client of the running loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def engine_error(status: int, raw: bytes) -> APIError:
    """llama-server's error answer as ours: its 400s are the caller's, the rest are ours."""
    import json

    try:
        error = json.loads(raw)["error"]
        message, kind = str(error.get("message", "")), str(error.get("type", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        message, kind = "", ""
    if status == 400:
        if kind == "exceed_context_size_error":
            return BadRequest(message, code="context_length_exceeded")
        return BadRequest(message or "the engine refused the request")
    if status == 503:
        return NotReady("the engine is loading")
    return APIError("generation failed", code="generation_failed")
