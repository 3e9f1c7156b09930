"""Helpers shared by the local tools: the function entry, project.yml's limits, DO events.

The service itself (`python -m router_service`) is the `router_service` package, on uvicorn;
what is left here is the entry loader and the `web: raw` event builder.
"""

from __future__ import annotations

import base64
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router_service import function_limits

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "packages" / "chat" / "ask" / "__main__.py"
PROJECT = ROOT / "project.yml"
__all__ = ["ENTRY", "PROJECT", "ROOT", "build_event", "ensure_import_path", "function_limits",
           "load_entry"]

Main = Callable[[dict[str, Any], Any], dict[str, Any]]
_TEXT_TYPES = ("json", "text", "xml", "x-www-form-urlencoded", "javascript")


def load_entry(path: Path = ENTRY) -> Main:
    """Import a function's `__main__.py` the way the runtime does and return its `main`."""
    spec = importlib.util.spec_from_file_location("chat_ask_entry", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main: Main = module.main
    return main


def build_event(method: str, rest: str, headers: dict[str, str], body: bytes,
                query: str) -> dict[str, Any]:
    """A `web: raw` event as DigitalOcean builds it: text bodies as-is, others base64."""
    ctype = headers.get("content-type", "").lower()
    is_text = not body or any(t in ctype for t in _TEXT_TYPES)
    text: str | None = None
    if is_text:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return {"http": {
        "method": method, "path": rest, "headers": headers, "queryString": query,
        "body": text if text is not None else base64.b64encode(body).decode("ascii"),
        "isBase64Encoded": text is None,
    }}


def ensure_import_path() -> None:
    """Let the entry import `router` from the checkout, as build.sh's copy does when deployed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

