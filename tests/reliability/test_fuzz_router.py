"""Bad input to the `ask` function: hypothesis-drawn bodies, headers, paths and base64 flags.

GIVEN the real `main` with healthy backends, API keys and a CORS allowlist, WHEN FUZZ_CASES
hostile raw web events arrive (2,000 in `make reliability`), THEN `main` always returns, every
answer has a documented status, and every error is the documented JSON error. Never a 5xx other
than the documented 503 and 504, never an exception out of `main`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from router._do_event import FunctionContext
from router_tools.gateway import load_entry
from tests.conftest import SPACE_TOKEN, WORKER_TOKEN
from tests.fakes.openai_backend import FakeBackend
from tests.reliability.conftest import FUZZ_CASES, Ledger, Results, served
from tests.reliability.strategies import web_request

ORIGIN = "https://app.example.com"
KEYS = ["key-fuzz-alpha-0001", "key-fuzz-beta-0002"]
DOCUMENTED = {200, 204, 400, 401, 403, 404, 405, 413, 503, 504}
FUZZ = settings(max_examples=FUZZ_CASES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

Main = Callable[[dict[str, Any], Any], dict[str, Any]]


@pytest.fixture(scope="module")
def fuzz_main(ledger: Ledger) -> Iterator[Main]:
    """The real entry in one warm container, against healthy backends on loopback."""
    worker = FakeBackend("worker", token=WORKER_TOKEN)
    space = FakeBackend("space", token=SPACE_TOKEN)
    with served(worker) as worker_url, served(space) as space_url, \
            pytest.MonkeyPatch.context() as mp:
        env = {"WORKER_URL": worker_url, "WORKER_TOKEN": WORKER_TOKEN, "SPACE_URL": space_url,
               "SPACE_TOKEN": SPACE_TOKEN, "ROUTER_DEADLINE_MS": "2000",
               "FALLBACK_RESERVE_MS": "1000", "CORS_ORIGINS": ORIGIN,
               "API_KEYS": ",".join(KEYS)}
        for key, value in env.items():
            mp.setenv(key, value)
        ledger.secret(*KEYS)
        main = load_entry()
        main({"http": {"method": "GET", "path": "/health", "headers": {}}}, None)  # build it
        yield main
        main.__globals__["FUNCTION"].close()


def check_answer(answer: dict[str, Any]) -> int:
    """THEN a documented status and, for every error, the documented JSON error."""
    status = answer["statusCode"]
    assert status in DOCUMENTED, answer
    headers = answer["headers"]
    assert isinstance(answer["body"], str)
    if status >= 400:
        assert headers["content-type"] == "application/json"
        error = json.loads(answer["body"])["error"]
        assert set(error) == {"type", "message", "code"}, error
        assert all(isinstance(v, str) and v for v in error.values()), error
    if status in (503,):
        assert int(headers["retry-after"]) >= 1
    return int(status)


@given(http=web_request(ORIGIN, KEYS))
@FUZZ
def test_fuzz_ask(fuzz_main: Main, ledger: Ledger, results: Results,
                  http: dict[str, Any]) -> None:
    answer = fuzz_main({"http": http}, FunctionContext.with_timeout(28_000))
    ledger.answer(answer["statusCode"], answer["headers"], answer["body"])
    status = check_answer(answer)
    results.bump("fuzz_router", "cases")
    results.bump("fuzz_router_status", str(status))


@pytest.fixture(scope="module", autouse=True)
def _tally(results: Results) -> Iterator[None]:
    yield
    statuses = Counter(results.data.get("fuzz_router_status", {}))
    results.add("fuzz_router", "statuses", dict(sorted(statuses.items())))
