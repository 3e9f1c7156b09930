"""What a backend's failure or answer means: every httpx error and every unusable answer
becomes one of our `BackendError`s here, and nowhere else (a test pins the httpx table)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import httpx

from router._errors import (
    BackendError,
    BackendProtocolError,
    BackendRateLimited,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    EndpointStarting,
    SpaceSleeping,
    SpaceStarting,
)

# A deployment's configured name (router/_deployments.py): `worker`, `space`, or one of
# SMALL_DEPLOYMENTS and LLM_DEPLOYMENTS.
BackendName = str

# (error class, sent?, retryable?). Looked up along the MRO, so a
# subclass httpx adds later still lands on its parent's row; a test pins full coverage.
_HTTPX_ERRORS: dict[type[httpx.HTTPError], tuple[type[BackendError], bool, bool]] = {
    httpx.ConnectError: (BackendUnavailable, False, True),
    httpx.ConnectTimeout: (BackendTimeout, False, True),
    httpx.PoolTimeout: (BackendTimeout, False, True),
    httpx.ReadTimeout: (BackendTimeout, True, False),
    httpx.WriteTimeout: (BackendTimeout, True, False),
    httpx.TimeoutException: (BackendTimeout, True, False),
    httpx.ReadError: (BackendUnavailable, True, False),
    httpx.WriteError: (BackendUnavailable, True, False),
    httpx.CloseError: (BackendUnavailable, True, False),
    httpx.NetworkError: (BackendUnavailable, True, False),
    httpx.RemoteProtocolError: (BackendUnavailable, True, False),
    httpx.LocalProtocolError: (BackendProtocolError, False, False),
    httpx.ProtocolError: (BackendProtocolError, True, False),
    httpx.ProxyError: (BackendUnavailable, False, True),
    httpx.UnsupportedProtocol: (BackendProtocolError, False, False),
    httpx.TransportError: (BackendUnavailable, True, False),
    httpx.DecodingError: (BackendProtocolError, True, False),
    httpx.TooManyRedirects: (BackendProtocolError, True, False),
    httpx.HTTPStatusError: (BackendProtocolError, True, False),
    httpx.RequestError: (BackendUnavailable, True, False),
    httpx.HTTPError: (BackendUnavailable, True, False),
}


def translate_httpx_error(exc: httpx.HTTPError, backend: BackendName, kind: str = "worker"
                          ) -> BackendError:
    """Map any httpx error to our tree, without its message (which may hold a URL)."""
    for klass in type(exc).__mro__:
        if klass in _HTTPX_ERRORS:
            error_class, sent, retryable = _HTTPX_ERRORS[klass]
            break
    else:  # pragma: no cover - httpx.HTTPError is in the table
        error_class, sent, retryable = BackendUnavailable, True, False
    # A Space that does not even accept the connection in time is most likely starting up.
    if kind == "space" and isinstance(exc, httpx.ConnectTimeout):
        error_class = SpaceStarting
    return error_class(f"{backend}: {type(exc).__name__}", backend=backend, sent=sent,
                       retryable=retryable)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# The caller sees at most this much of a backend's message; it is scrubbed before the cut,
# over the first SCRUB_CHARS (any secret that reaches into the first MESSAGE_CHARS lies whole
# inside them).
MESSAGE_CHARS = 300
SCRUB_CHARS = 16_384
_URL = re.compile(r"\b(?:https?|wss?)://\S+", re.IGNORECASE)
_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOKENISH = re.compile(r"\b(?:hf_|sk-|Bearer\s+)\S+", re.IGNORECASE)


def scrub_message(message: str, private: Sequence[str]) -> str:
    """A backend's message made safe for the caller: every private value (secrets, backend
    hosts, matched in any case), URL and token-like word replaced, and only then cut to
    MESSAGE_CHARS, so that a cut can never leave part of a secret behind."""
    text = message[:SCRUB_CHARS]
    values = sorted({value for value in private if value}, key=len, reverse=True)
    if values:
        # Longest first: a URL goes before the host or the token inside it.
        text = re.sub("|".join(re.escape(value) for value in values), "[redacted]", text,
                      flags=re.IGNORECASE)
    text = _TOKENISH.sub("[redacted]", _URL.sub("[url]", text))
    return text[:MESSAGE_CHARS]


def provider_error(body: bytes) -> tuple[str | None, str | None]:
    """A 4xx body's own `{"error": {"code", "message"}}`, the message still unscrubbed (the
    engine scrubs it with the settings' private values, then cuts it: `scrub_message`);
    (None, None) when it has none."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    code = error.get("code") or error.get("type")
    message = error.get("message")
    safe_code = str(code) if isinstance(code, str) and _CODE.match(code) else None
    raw_message = message[:SCRUB_CHARS] if isinstance(message, str) and message.strip() \
        else None
    return safe_code, raw_message


def classify_response(status: int, headers: httpx.Headers, body: bytes, backend: BackendName,
                      kind: str = "worker") -> dict[str, Any]:
    """Return the JSON object of a good answer (`body`, read whole and decoded), or raise the
    error that the answer means (`kind`: the deployment's, router/_deployments.py)."""
    ctype = headers.get("content-type", "").lower()
    looks_html = "html" in ctype or body.lstrip()[:1] == b"<"
    retry_after = _retry_after(headers)
    if kind in ("space", "endpoint") and (looks_html or status in (502, 503, 504)):
        # Hugging Face's edge answers a sleeping Space with 200 and an HTML page; starting or
        # broken Spaces answer 502/503/504 or HTML. An endpoint's proxy answers 503 while a
        # replica initializes (scaled to zero, the request starts one) and 502/503 while
        # paused. None of these is a model reply.
        error = EndpointStarting if kind == "endpoint" else \
            SpaceSleeping if b"sleeping" in body.lower() else SpaceStarting
        raise error(f"{backend}: not ready (HTTP {status})", backend=backend, sent=False,
                    retry_after_s=retry_after, status=status)
    if status == 429:
        raise BackendRateLimited(f"{backend}: rate limited", backend=backend, sent=False,
                                 retryable=retry_after is not None, retry_after_s=retry_after,
                                 status=status)
    if status == 503:
        raise BackendUnavailable(f"{backend}: unavailable (HTTP 503)", backend=backend, sent=False,
                                 retryable=retry_after is not None, retry_after_s=retry_after,
                                 status=status)
    if status in (502, 504):
        raise BackendUnavailable(f"{backend}: bad gateway (HTTP {status})", backend=backend,
                                 sent=status == 504, retryable=True, retry_after_s=retry_after,
                                 status=status)
    if status >= 500:
        raise BackendServerError(f"{backend}: server error (HTTP {status})", backend=backend,
                                 status=status, retryable=True)
    if status >= 400:
        rejected = BackendRejected(f"{backend}: rejected (HTTP {status})", backend=backend,
                                   sent=True, status=status)
        rejected.provider_code, rejected.provider_message = provider_error(body)
        raise rejected
    if status != 200 or "json" not in ctype:
        raise BackendProtocolError(f"{backend}: unexpected answer (HTTP {status}, not JSON)",
                                   backend=backend, status=status)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise BackendProtocolError(f"{backend}: malformed JSON", backend=backend,
                                   status=status) from None
    if not isinstance(payload, dict):
        raise BackendProtocolError(f"{backend}: JSON is not an object", backend=backend,
                                   status=status)
    return payload


def rejected_detail(exc: BackendError) -> str:
    """A safe, short description of a backend's 4xx, for the caller."""
    return f"the {exc.backend} rejected the request (HTTP {exc.status})"
