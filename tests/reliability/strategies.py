"""Hypothesis strategies for hostile HTTP requests: bodies, headers, paths, base64 flags.

Bodies are drawn from three families: the documented shapes with wrong, extreme or missing
values; arbitrary JSON; and raw text and bytes spiked with the inputs that break JSON parsers
(very long integers, deep nesting, lone surrogate escapes, NaN, byte-order marks).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

ROLES = ["system", "developer", "user", "assistant", "tool", "", "USER"]
MODELS = ["auto", "small", "llm", "gpt-4o", "", "llm "]
NASTY = [
    "1" * 4400,                      # longer than Python's int-string limit
    "-" + "9" * 5000,
    "[" * 3000 + "]" * 3000,          # deeper than the recursion limit
    '"\\ud800"',                     # a lone surrogate, escaped (valid JSON, invalid text)
    '"\\udfff\\ud800"',
    "NaN", "Infinity", "-Infinity", "1e999", "-0", "1.0e-400",
    '"\\u0000"', "\ufeff{}", "null", "true", '""', "[]",
]
WEIRD_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e", "💥" * 3, "a" * 40_000, " "]),
)

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), WEIRD_TEXT)
json_any = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
maybe = st.one_of(json_any, json_scalar)

content = st.one_of(
    WEIRD_TEXT, st.none(), st.integers(),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", ""]),
                                    "text": st.one_of(WEIRD_TEXT, st.integers())}), max_size=3),
)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": content}),
    st.fixed_dictionaries({}, optional={"role": maybe, "content": maybe}),
)
messages = st.one_of(st.lists(message, max_size=5), st.lists(message, min_size=65, max_size=70),
                     maybe)
# Seeds at and past torch's 64-bit range (issue 11: 2**70 used to stop the model server).
SEED_EDGES = [2**64 - 1, 2**64, 2**70, -(2**63), -(2**63) - 1, 10**30]
tokens = st.one_of(st.integers(-3, 3000), st.sampled_from([2**31, 2**63, 10**30]), maybe)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), maybe)
model = st.one_of(st.sampled_from(MODELS), WEIRD_TEXT, maybe)

chat_body = st.fixed_dictionaries({"messages": messages}, optional={
    "model": model, "max_tokens": tokens, "max_completion_tokens": tokens,
    "temperature": number, "top_p": number, "stream": st.one_of(st.booleans(), maybe),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": maybe}), maybe),
    "stop": st.one_of(WEIRD_TEXT, st.lists(WEIRD_TEXT, max_size=5), maybe),
    "seed": st.one_of(st.integers(), st.sampled_from(SEED_EDGES), maybe),
    "n": st.one_of(st.integers(-1, 3), maybe),
    "tools": maybe, "user": maybe,
})
inputs = st.one_of(WEIRD_TEXT, st.lists(WEIRD_TEXT, max_size=4), st.lists(st.integers()),
                   st.lists(WEIRD_TEXT, min_size=65, max_size=66), maybe)
embeddings_body = st.fixed_dictionaries({"input": inputs}, optional={
    "model": model, "encoding_format": st.one_of(st.sampled_from(["float", "base64", "x"]),
                                                 maybe)})
ai_chat_body = st.fixed_dictionaries({"messages": messages}, optional={
    "max_length": tokens, "temperature": number, "system_prompt": st.one_of(WEIRD_TEXT, maybe),
    "model": model})
ai_generate_body = st.fixed_dictionaries({"prompt": st.one_of(WEIRD_TEXT, maybe)}, optional={
    "max_length": tokens, "temperature": number, "system_prompt": st.one_of(WEIRD_TEXT, maybe),
    "model": model})
ai_embeddings_body = st.fixed_dictionaries({"text": inputs})


def dump(value: Any) -> str:
    """JSON text of `value`, as a client would send it (NaN and lone surrogates included)."""
    return json.dumps(value, allow_nan=True)


shaped = st.one_of(chat_body, embeddings_body, ai_chat_body, ai_generate_body,
                   ai_embeddings_body).map(dump)
raw_body = st.one_of(
    shaped, json_any.map(dump), st.text(max_size=200), st.sampled_from(NASTY),
    st.tuples(st.sampled_from(['{"messages": ', '{"input": ', '{"prompt": ', '{"text": ']),
              st.sampled_from(NASTY)).map(lambda t: t[0] + t[1] + "}"),
    st.tuples(shaped, st.integers(0, 60)).map(lambda t: t[0][: t[1]]),  # cut short
)
raw_bytes = st.one_of(raw_body.map(lambda s: s.encode("utf-8", "surrogatepass")),
                      st.binary(max_size=200))


@st.composite
def body_and_flag(draw: st.DrawFn) -> tuple[Any, Any]:
    """(body, isBase64Encoded): plain text, good base64, bad base64, or odd flags."""
    kind = draw(st.sampled_from(["plain", "b64", "bad_b64", "odd"]))
    if kind == "plain":
        return draw(raw_body), draw(st.sampled_from([False, None]))
    if kind == "b64":
        return base64.b64encode(draw(raw_bytes)).decode("ascii"), True
    if kind == "bad_b64":
        return draw(st.text(max_size=50)), True
    odd_body = st.one_of(raw_body, st.integers(), st.none(), st.lists(st.integers(), max_size=2))
    odd_flag = st.one_of(st.text(max_size=5), st.integers(), st.none(), st.booleans())
    return draw(odd_body), draw(odd_flag)


PATHS = ["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/ai/chat", "/ai/generate",
         "/ai/embeddings", "/health", "/", ""]
path = st.one_of(
    st.sampled_from(PATHS), st.sampled_from(PATHS).map(lambda p: p + "/"),
    st.tuples(st.sampled_from(PATHS), WEIRD_TEXT).map("".join), WEIRD_TEXT,
    st.sampled_from(["//v1/chat/completions", "/v1/../health", "/V1/chat/completions",
                     "v1/chat/completions", "/health?x=1", "/%2e%2e/health"]),
)
method = st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                    "HEAD", "post"]), WEIRD_TEXT)


def header_map(origin: str, keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Headers: the ones the router reads, with good, almost-good and bad values, and junk."""
    known = st.fixed_dictionaries({}, optional={
        "origin": st.one_of(st.sampled_from([origin, origin + "/", origin + ".evil.example",
                                             "https://evil.example", "null", ""]), WEIRD_TEXT),
        "authorization": st.one_of(
            st.sampled_from([f"Bearer {k}" for k in keys] + [f"bearer {k}" for k in keys]
                            + [f"Bearer {k[:-1]}" for k in keys] + ["Bearer", "Basic x"]),
            WEIRD_TEXT),
        "x-api-key": st.one_of(st.sampled_from(keys + [k + "x" for k in keys]), WEIRD_TEXT),
        "x-chat-deadline-ms": st.one_of(st.integers(-(10**6), 10**12).map(str), WEIRD_TEXT,
                                        st.just("9" * 5000)),
        "x-chat-warmup": st.one_of(st.just("1"), WEIRD_TEXT),
        "content-type": st.one_of(st.sampled_from(["application/json", "text/plain"]),
                                  WEIRD_TEXT),
        "access-control-request-method": st.one_of(st.sampled_from(["POST", "PUT"]),
                                                   WEIRD_TEXT),
    })
    junk = st.dictionaries(WEIRD_TEXT, st.one_of(WEIRD_TEXT, st.integers()), max_size=3)
    return st.tuples(known, junk).map(lambda t: {**t[1], **t[0]})


BODY_PATHS = ["/v1/chat/completions", "/v1/embeddings", "/ai/chat", "/ai/generate",
              "/ai/embeddings"]


@st.composite
def web_request(draw: st.DrawFn, origin: str, keys: list[str]) -> dict[str, Any]:
    """A raw `http` event part. Half are hostile bodies behind a valid envelope (so they reach
    the parsers and the backends); the rest are hostile everywhere."""
    body, flag = draw(body_and_flag())
    if draw(st.booleans()):
        auth = draw(st.sampled_from([{"authorization": f"Bearer {keys[0]}"},
                                     {"x-api-key": keys[-1]}, {"origin": origin}]))
        return {"method": "POST", "path": draw(st.sampled_from(BODY_PATHS)), "headers": auth,
                "body": body, "isBase64Encoded": flag, "queryString": ""}
    return {"method": draw(method), "path": draw(path), "headers": draw(header_map(origin, keys)),
            "body": body, "isBase64Encoded": flag,
            "queryString": draw(st.one_of(st.just(""), st.text(max_size=20)))}
