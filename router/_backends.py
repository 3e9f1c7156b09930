"""Backend clients: pooled httpx clients per backend, one attempt per call.

What an httpx error or an answer means is decided in `classify.py`, and nowhere else. Retries
live in `retry.py`; httpx's own transport retries stay at 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from router._classify import BackendName as BackendName  # re-exported: the name callers use
from router._classify import classify_response, translate_httpx_error
from router._config import Settings
from router._errors import BackendError, BackendProtocolError, BackendTimeout, NoTimeLeft
from router._stream_read import (
    SseParser,
    StreamLimits,
    chunks_of_completion,
    read_chunks,
    usage_in,
)
from router._telemetry import trace_hook

# The platform cuts answers at 1 MB; a backend answer past twice that is refused while reading.
MAX_ANSWER_BYTES = 2 * 1024 * 1024

# httpx writes a request's headers and body separately; without TCP_NODELAY the body can wait
# for the server's delayed ACK.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

# After a stream's finish_reason, how long the rest (its `[DONE]`) may take to be read.
DRAIN_S = 0.05
# Per pool (Backend keeps up to MAX_SHARDS of them, a new one when each serves
# SHARD_REQUESTS): the function runs one request at a time, the service many.
POOL_CONNECTIONS = 64
POOL_KEEPALIVE = 16
SHARD_REQUESTS = 16
MAX_SHARDS = 32

@functools.cache
def shared_tls() -> ssl.SSLContext:
    """One verifying TLS context per container: loading the CA bundle costs ~20 ms of cold
    start, and httpx would load it again for every client."""
    return httpx.create_ssl_context(trust_env=False)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """How to reach one deployment (router/_deployments.py)."""

    name: BackendName
    base_url: str
    headers: dict[str, str]
    model: str
    # What its failures mean (router/_classify.py): `space`, `endpoint`, `worker`, `openai`.
    kind: str = "worker"


def backend_configs(settings: Settings) -> dict[BackendName, BackendConfig]:
    """Every configured deployment by name, small tier first: `worker` (WORKER_URL) always,
    `space` when SPACE_URL is set, and those of SMALL_DEPLOYMENTS and LLM_DEPLOYMENTS."""
    return {d.name: BackendConfig(d.name, d.url, d.headers(), d.model, d.kind)
            for d in settings.deployments}


class Backend:
    """One backend: pooled async httpx clients reused across warm invocations.

    httpcore's pool does work in proportion to (requests in flight x connections) on every
    request and every close, which a service with hundreds of concurrent streams feels: so a
    backend keeps several small pools, and opens another only when each one it has is serving
    SHARD_REQUESTS requests. The function (one request at a time) only ever has the first.
    """

    def __init__(self, config: BackendConfig, *, connect_timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = config.name
        self.kind = config.kind
        self.connect_timeout_s = connect_timeout_s
        self._transport = transport
        self._clients = [self._new_client()]
        self._busy = [0]

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.config.base_url,
            headers={"user-agent": "chat-router/0.1", **self.config.headers},
            transport=self._transport or httpx.AsyncHTTPTransport(
                retries=0, socket_options=NODELAY, verify=shared_tls()),
            limits=httpx.Limits(max_connections=POOL_CONNECTIONS,
                                max_keepalive_connections=POOL_KEEPALIVE, keepalive_expiry=30.0),
            follow_redirects=False,
            trust_env=False,
            # Each request, while traced, is an attempt span and carries `traceparent` on.
            event_hooks={"request": [trace_hook(self.name)]},
        )

    def _lease(self) -> int:
        """The least busy pool (a new one when all are full), counted as one busier."""
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        if self._busy[index] >= SHARD_REQUESTS and len(self._clients) < MAX_SHARDS \
                and self._transport is None:
            self._clients.append(self._new_client())
            self._busy.append(0)
            index = len(self._clients) - 1
        self._busy[index] += 1
        return index

    def _release(self, index: int) -> None:
        self._busy[index] -= 1

    async def request(self, method: str, path: str, *, timeout_s: float,
                      json_body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One attempt, bounded by `timeout_s` end to end, however the backend behaves.

        The whole attempt is cancelled at its end (a backend dripping bytes inside httpx's
        per-read timeout is dropped too), and it counts as sent only if its request left.
        """
        if timeout_s <= 0:
            raise NoTimeLeft(f"{self.name}: no time left", backend=self.name, sent=False)
        sent = SentFlag()
        lease = self._lease()
        try:
            async with asyncio.timeout(timeout_s):
                return await self._send(self._clients[lease], method, path, timeout_s,
                                        json_body, sent)
        except TimeoutError:
            raise BackendTimeout(f"{self.name}: no answer in {timeout_s:.2f}s",
                                 backend=self.name, sent=sent.sent) from None
        finally:
            self._release(lease)

    async def _send(self, client: httpx.AsyncClient, method: str, path: str, timeout_s: float,
                    json_body: dict[str, Any] | None, sent: SentFlag) -> dict[str, Any]:
        timeout = httpx.Timeout(timeout_s, connect=min(self.connect_timeout_s, timeout_s))
        try:
            async with client.stream(method, path, json=json_body, timeout=timeout,
                                          extensions={"trace": sent.trace}) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        # A 128 MB function must not hold whatever a broken backend sends.
                        raise BackendProtocolError(f"{self.name}: answer over {MAX_ANSWER_BYTES} "
                                                   "bytes", backend=self.name)
        except httpx.HTTPError as exc:
            raise translate_httpx_error(exc, self.name, self.kind) from None
        return classify_response(response.status_code, response.headers, bytes(body), self.name,
                                 self.kind)

    async def open_stream(self, method: str, path: str, *, timeout_s: float,
                          first_token_s: float, json_body: dict[str, Any]) -> OpenStream:
        """Send a `stream: true` request and return once its headers are in: an `OpenStream`,
        or the error its status means. Headers must come within the first-token limit."""
        if timeout_s <= 0:
            raise NoTimeLeft(f"{self.name}: no time left", backend=self.name, sent=False)
        sent = SentFlag()
        stack = contextlib.AsyncExitStack()
        lease = self._lease()
        stack.callback(self._release, lease)
        timeout = httpx.Timeout(timeout_s, connect=min(self.connect_timeout_s, timeout_s))
        try:
            async with asyncio.timeout(min(timeout_s, first_token_s)):
                response = await stack.enter_async_context(self._clients[lease].stream(
                    method, path, json=json_body, timeout=timeout,
                    extensions={"trace": sent.trace}))
                if response.status_code == 200 and "event-stream" in \
                        response.headers.get("content-type", "").lower():
                    return OpenStream(self.name, response, stack)
                body = await _read_capped(response, self.name)
        except TimeoutError:
            await stack.aclose()
            raise BackendTimeout(f"{self.name}: no stream headers in time", backend=self.name,
                                 sent=sent.sent) from None
        except httpx.HTTPError as exc:
            await stack.aclose()
            raise translate_httpx_error(exc, self.name, self.kind) from None
        except BaseException:
            await stack.aclose()
            raise
        await stack.aclose()
        payload = classify_response(response.status_code, response.headers, body, self.name,
                                    self.kind)
        # A backend that ignored `stream: true` and answered JSON: relay it as one stream.
        return OpenStream(self.name, None, stack, payload)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        for client in self._clients:
            await client.aclose()


async def _read_capped(response: httpx.Response, name: str) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise BackendProtocolError(f"{name}: answer over {MAX_ANSWER_BYTES} bytes",
                                       backend=name)
    return bytes(body)


class OpenStream:
    """A backend's stream whose headers have arrived; `chunks` reads and checks the rest."""

    def __init__(self, name: BackendName, response: httpx.Response | None,
                 stack: contextlib.AsyncExitStack, payload: dict[str, Any] | None = None) -> None:
        self.name = name
        self.response = response
        self.payload = payload
        self._stack = stack
        self._body = self._bytes()  # one iterator: the drain goes on where the reader stopped
        self.parser = SseParser()

    async def _bytes(self) -> AsyncIterator[bytes]:
        assert self.response is not None
        total = 0
        try:
            async for data in self.response.aiter_bytes():
                total += len(data)
                if total > MAX_ANSWER_BYTES:
                    raise BackendProtocolError(f"{self.name}: stream over {MAX_ANSWER_BYTES} "
                                               "bytes", backend=self.name)
                yield data
        except httpx.HTTPError as exc:
            raise translate_httpx_error(exc, self.name) from None

    async def chunks(self, limits: StreamLimits, *, started: float, end: float,
                     first_by: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The checked chunks (see `stream_read.read_chunks`)."""
        if self.payload is not None:
            for chunk in chunks_of_completion(self.payload, self.name):
                yield chunk
            return
        async for chunk in read_chunks(self._body, self.name, limits, started=started,
                                       end=end, first_by=first_by, parser=self.parser):
            yield chunk

    async def finish(self) -> dict[str, Any] | None:
        """After the finish_reason: read the rest (a usage chunk, `[DONE]`, normally already
        on the way) for up to DRAIN_S, so that the connection goes back to the pool instead of
        being closed (a new connection per stream costs more than the whole relay); then
        close. Returns the usage, if the backend sent one."""
        if self.payload is not None:
            await self.aclose()
            usage = self.payload.get("usage")
            return usage if isinstance(usage, dict) else None
        events = list(self.parser.rest)
        with contextlib.suppress(httpx.HTTPError, TimeoutError, BackendError):
            async with asyncio.timeout(DRAIN_S):
                async for data in self._body:
                    events += self.parser.feed(data)
        await self.aclose()
        return usage_in(events)

    async def aclose(self) -> None:
        """Close the response (and so hang up on a backend still sending)."""
        await self._stack.aclose()


class SentFlag:
    """Set once httpcore starts writing the request: before that, the backend cannot have
    run it, so a timeout then (waiting for a pooled connection, say) may be retried."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook."""
        if event.startswith(("http11.send_request_headers", "http2.send_request_headers")):
            self.sent = True
