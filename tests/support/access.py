"""Calling the real `main` as a client with a credential would: the shared test secret, a
bearer header, a fresh context, and one chat request with its JSON body decoded."""

from __future__ import annotations

import json
from typing import Any

from router import FunctionContext
from tests.conftest import Main, load_event

SECRET = "client-token-secret-0123456789abcdef"


def ctx() -> FunctionContext:
    """A DigitalOcean-like context with the function's 28 s left."""
    return FunctionContext.with_timeout(28_000)


def ask(main: Main, headers: dict[str, str], name: str = "chat_completions") -> dict[str, Any]:
    """One chat request through the real handler; the answer with its body decoded."""
    result = main(load_event(name, headers=headers), ctx())
    return {**result, "json": json.loads(result["body"]) if result["body"] else None}


def bearer(token: str) -> dict[str, str]:
    """The `Authorization` header that carries `token`."""
    return {"authorization": f"Bearer {token}"}
