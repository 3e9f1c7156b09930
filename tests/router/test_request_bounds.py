"""Issue 25, items 5 and 6: what the body may hold is bounded when it is parsed, on the function
and on the service alike. A non-finite number (`Infinity`, `NaN`, `1e999`) and a field past
OpenAI's bounds (4 stops, say) are each a clear 400 naming the field, and no backend is called."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from router._do_event import FunctionContext
from router_service import Service
from tests.conftest import with_body
from tests.fakes.openai_backend import FakeBackend
from tests.support.service import serve_main

CHAT = {"model": "llm", "messages": [{"role": "user", "content": "hi"}]}


def _nested(depth: int) -> Any:
    value: Any = {"type": "string"}
    for _ in range(depth):
        value = {"type": "object", "properties": {"x": value}}
    return value


# (what the caller sent, as raw JSON text of the whole body, the field the 400 must name)
NON_FINITE = [
    ('{"model": "llm", "presence_penalty": Infinity, "messages": [{"role": "user", '
     '"content": "hi"}]}', "presence_penalty"),
    ('{"model": "llm", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}',
     "temperature"),
    ('{"model": "llm", "frequency_penalty": -Infinity, "messages": [{"role": "user", '
     '"content": "hi"}]}', "frequency_penalty"),
    ('{"model": "llm", "top_p": 1e999, "messages": [{"role": "user", "content": "hi"}]}',
     "top_p"),
    ('{"model": "llm", "logit_bias": {"42": -Infinity}, "messages": [{"role": "user", '
     '"content": "hi"}]}', "logit_bias.42"),
]

OVER_BOUNDS = [
    ({"stop": [f"s{i}" for i in range(20_000)]}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": "x" * 200_000}, "stop"),
    ({"stop": ["ok", "y" * 5_000]}, "stop"),
    ({"logit_bias": {str(token): 1 for token in range(15_000)}}, "logit_bias"),
    ({"logit_bias": {"42": 101}}, "logit_bias"),
    ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": _nested(450)}}]},
     "tools"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
     "tools"),
    ({"seed": int("9" * 4_000)}, "seed"),
    ({"seed": 2 ** 63}, "seed"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"user": "u" * 5_000}, "user"),
]

WITHIN_BOUNDS = {"stop": ["a", "b", "c", "d"], "logit_bias": {"42": -100, "7": 100},
                 "seed": 2 ** 63 - 1, "top_logprobs": 20, "logprobs": True,
                 "presence_penalty": -2, "frequency_penalty": 2.0, "metadata": {"k": "v"},
                 "tools": [{"type": "function", "function": {"name": "f",
                                                             "parameters": _nested(8)}}]}


def _function_answer(main: Callable[..., dict[str, Any]], raw: str) -> dict[str, Any]:
    event = with_body("chat_completions", {})
    event["http"]["body"] = raw
    answer = main(event, FunctionContext.with_timeout(20_000))
    return answer


def _error(answer_body: str) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(answer_body)["error"]
    return error


@pytest.mark.parametrize(("raw", "field"), NON_FINITE)
def test_a_non_finite_number_is_a_400_naming_its_field_on_the_function(
        main, worker: FakeBackend, space: FakeBackend, raw: str, field: str):
    """GIVEN the function WHEN a chat body holds a non-finite number (`Infinity`, `NaN`, or a
    literal too large for a float) THEN 400 naming the field, and neither backend was called
    (before, httpx raised while encoding the backend request: a 500)."""
    answer = _function_answer(main, raw)
    assert answer["statusCode"] == 400, answer["body"]
    error = _error(answer["body"])
    assert error["code"] == "invalid_request"
    assert f"'{field}'" in error["message"] and "finite" in error["message"]
    assert worker.generation_requests() + space.generation_requests() == 0


@pytest.mark.parametrize(("extra", "field"), OVER_BOUNDS,
                         ids=[f"{field}-{index}" for index, (_, field) in enumerate(OVER_BOUNDS)])
def test_a_field_past_its_bound_is_a_400_naming_it_on_the_function(
        main, worker: FakeBackend, space: FakeBackend, extra: dict[str, Any], field: str):
    """GIVEN the function WHEN a chat carries a field past its bound (more than 4 stops, a
    200 KB stop, 15,000 logit_bias entries, tools nested 900 deep, a 4,000-digit seed...) THEN
    400 `invalid_request` naming the field, and no backend call."""
    answer = _function_answer(main, json.dumps({**CHAT, **extra}))
    assert answer["statusCode"] == 400, answer["body"][:300]
    error = _error(answer["body"])
    assert error["code"] == "invalid_request"
    assert f"'{field}'" in error["message"], error["message"]
    assert len(error["message"]) < 300
    assert worker.generation_requests() + space.generation_requests() == 0


def test_fields_within_their_bounds_reach_the_backend_unchanged(
        main, worker: FakeBackend, space: FakeBackend):
    """GIVEN the function WHEN a chat carries each bounded field at its limit THEN it is
    answered, and the backend got every field exactly as sent (the bounds refuse only what is
    past them)."""
    answer = _function_answer(main, json.dumps({**CHAT, **WITHIN_BOUNDS}))
    assert answer["statusCode"] == 200, answer["body"][:300]
    sent = (space.seen or worker.seen)[-1].body
    assert sent is not None
    for name, value in WITHIN_BOUNDS.items():
        assert sent[name] == value, name


@pytest.fixture
def service(make_main: Callable[[dict[str, str]], Any], env: dict[str, str]
            ) -> Iterator[Service]:
    """The service over the same fakes."""
    service = serve_main(make_main(env), namespace="bounds", port=0)
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.parametrize(("raw", "field"), [NON_FINITE[0], (json.dumps(
    {**CHAT, "stop": [f"s{i}" for i in range(20_000)]}), "stop")])
def test_the_service_gives_the_same_400(service: Service, worker: FakeBackend,
                                        space: FakeBackend, raw: str, field: str):
    """GIVEN the service WHEN a chat body holds `"presence_penalty": Infinity`, or 20,000 stop
    strings THEN the same 400 naming the field, and no backend call."""
    with httpx.Client(timeout=10) as client:
        answer = client.post(service.function_url + "/v1/chat/completions",
                             content=raw.encode(), headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["code"] == "invalid_request"
    assert f"'{field}'" in answer.json()["error"]["message"]
    assert worker.generation_requests() + space.generation_requests() == 0
