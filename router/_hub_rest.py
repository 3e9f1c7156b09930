"""The Hub's REST APIs over plain httpx, for the `ask` function's wakes (never huggingface_hub,
whose import the function's cold start must not pay): one bounded client, every failure one
`HubError` that carries the status and nothing of the URL or the token."""

from __future__ import annotations

from typing import Any

import httpx

from router._backends import shared_tls


class HubError(Exception):
    """The Hub refused or failed a call; `status` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        # The start of the Hub's answer (a 400's reason, e.g. "already running").
        self.detail = detail


class RestClient:
    """One Hub API (`base_url`), with a token: JSON in, JSON out, bounded by `timeout_s`."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(
            base_url=base_url, headers={"authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport or httpx.HTTPTransport(retries=0, verify=shared_tls()),
            trust_env=False,
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        """One request; the JSON object it answers, or HubError."""
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise HubError(f"hub unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise HubError(f"hub answered HTTP {response.status_code}", response.status_code,
                           response.text[:200])
        try:
            data = response.json()
        except ValueError:
            raise HubError("hub answered non-JSON") from None
        return data if isinstance(data, dict) else {}

    def close(self) -> None:
        """Close the pooled connection."""
        self._client.close()
