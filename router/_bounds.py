"""Bounds on what a request body may hold, checked when it is parsed (router/_schema.py).

Two kinds. Every body: numbers must be finite (Python's JSON reader takes `Infinity`, `NaN`
and `1e999`, which no JSON encoder will write again: httpx raised while encoding the backend
request), and nesting is at most `MAX_DEPTH` deep. Chat bodies: the fields the router forwards
unchanged get OpenAI's own bounds where OpenAI states them (4 stops, 128 tools, 16 metadata
pairs, `top_logprobs` 0-20, penalties -2..2, logit_bias values -100..100, an int64 seed), and
ours where it does not (`OURS` below). Each refusal is a 400 naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from router._errors import BadRequest

# Levels of objects and arrays in a body: a strict structured-output schema of 10 levels sits
# about 25 deep in `tools`; 900 levels cost every later encoder a deep recursion.
MAX_DEPTH = 64
MAX_STOPS = 4
MAX_TOOLS = 128
MAX_METADATA = 16
# Ours, where OpenAI states no number: a stop string is a few words, a token id a few digits.
OURS = {"stop_chars": 256, "logit_bias_entries": 300, "token_id_digits": 9, "user_chars": 256}
# (low, high) of the numbers OpenAI bounds.
RANGES: dict[str, tuple[int | float, int | float]] = {
    "frequency_penalty": (-2.0, 2.0), "presence_penalty": (-2.0, 2.0), "top_logprobs": (0, 20),
    "seed": (-(2 ** 63), 2 ** 63 - 1)}
# Strings OpenAI caps: metadata keys and values, the caller's ids.
STRING_CAPS = {"user": OURS["user_chars"], "safety_identifier": 128,
               "prompt_cache_key": OURS["user_chars"]}


def _refuse(where: str, why: str) -> BadRequest:
    return BadRequest(f"invalid field '{where[:64]}': {why}", code="invalid_request")


def _path(parts: tuple[str, ...]) -> str:
    return ".".join(parts) or "body"


def check_body(data: dict[str, Any]) -> None:
    """Refuse a non-finite number or nesting past MAX_DEPTH anywhere in a parsed body."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, parts = stack.pop()
        if len(parts) >= MAX_DEPTH:
            raise _refuse(parts[0], f"nested deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise _refuse(_path((*parts, str(key))),
                              "numbers must be finite (no Infinity, NaN or overflow)")
            if isinstance(item, dict | list) and item:
                stack.append((item, (*parts, str(key))))


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_chat_fields(data: Mapping[str, Any]) -> None:
    """Refuse a chat field past its bound (see the module's docstring), naming it."""
    _check_stop(data.get("stop"))
    _check_logit_bias(data.get("logit_bias"))
    for name in ("tools", "functions"):
        value = data.get(name)
        if isinstance(value, list) and len(value) > MAX_TOOLS:
            raise _refuse(name, f"at most {MAX_TOOLS} entries")
    for name, (low, high) in RANGES.items():
        value = data.get(name)
        # Compared exactly (int with int): a float would let 2**63 pass as int64's top.
        if _number(value) and not low <= value <= high:
            raise _refuse(name, f"must be between {low} and {high}")
    for name, cap in STRING_CAPS.items():
        value = data.get(name)
        if isinstance(value, str) and len(value) > cap:
            raise _refuse(name, f"at most {cap} characters")
    _check_metadata(data.get("metadata"))


def _check_stop(stop: Any) -> None:
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list):
        return  # absent, or a wrong type the model's own validation names
    if len(stops) > MAX_STOPS:
        raise _refuse("stop", f"at most {MAX_STOPS} sequences")
    if any(isinstance(item, str) and len(item) > OURS["stop_chars"] for item in stops):
        raise _refuse("stop", f"each sequence at most {OURS['stop_chars']} characters")


def _check_logit_bias(bias: Any) -> None:
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise _refuse("logit_bias", "must be an object of token ids to numbers")
    if len(bias) > OURS["logit_bias_entries"]:
        raise _refuse("logit_bias", f"at most {OURS['logit_bias_entries']} entries")
    for token, value in bias.items():
        if not (token.isdigit() and token.isascii()
                and len(token) <= OURS["token_id_digits"]):
            raise _refuse("logit_bias", "keys must be token ids (non-negative integers)")
        if not _number(value) or not -100 <= value <= 100:
            raise _refuse("logit_bias", "values must be numbers from -100 to 100")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _refuse("metadata", "must be an object of strings")
    if len(metadata) > MAX_METADATA:
        raise _refuse("metadata", f"at most {MAX_METADATA} pairs")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise _refuse("metadata", "keys of at most 64 characters, string values of at "
                                      "most 512")
