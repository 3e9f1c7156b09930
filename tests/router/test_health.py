"""What an unauthenticated /health may say (issue 19, item 9), and a refused Redis login.

Anyone may learn that the router is up and how callers authenticate: pages poll /health, and
`"auth": "open"` is the deploy check. Which backend fails, and how quotas are counted, only a
caller with a key or token learns (or anyone, when the function is open to anyone anyway).
"""

from __future__ import annotations

from tests.conftest import Main
from tests.fakes.openai_backend import FakeBackend
from tests.support.access import ask
from tests.support.redis_server import PASSWORD, RedisServer

KEY = "key-alpha-123456"
PUBLIC = {"status", "auth"}


def test_health_names_a_failing_backend_only_to_a_caller_with_a_key(
        make_main, env: dict[str, str], space: FakeBackend):
    """GIVEN API_KEYS and a Space whose circuit is open (it failed, BREAKER_FAILURES=1) WHEN
    /health is read without a credential, with a wrong one, and with a key THEN the first two
    learn only status and auth mode; the key holder sees each circuit and the quota state."""
    space.mode = "status:500"
    main = make_main({**env, "API_KEYS": KEY, "BREAKER_FAILURES": "1"})
    assert ask(main, {"x-api-key": KEY}, "chat_completions_llm")["statusCode"] == 200
    anonymous = ask(main, {}, "health")
    wrong = ask(main, {"x-api-key": "key-alpha-654321"}, "health")
    detailed = ask(main, {"x-api-key": KEY}, "health")
    for answer in (anonymous, wrong):
        assert answer["statusCode"] == 200
        assert answer["json"] == {"status": "ok", "auth": "required"}
    assert detailed["json"]["backends"]["space"]["circuit"] == "open"
    assert detailed["json"]["quota"] == "off"


def test_an_open_function_shows_its_details_to_anyone(main: Main):
    """GIVEN no API_KEYS and no CLIENT_TOKEN_SECRET (anyone may call the backends anyway) WHEN
    /health is read THEN it shows the circuits too, and says auth is open."""
    health = ask(main, {}, "health")["json"]
    assert health["auth"] == "open"
    assert set(health["backends"]) == {"worker", "space"}


def test_a_refused_redis_login_is_misconfigured_on_health(
        make_main, env: dict[str, str], redis_server: RedisServer):
    """GIVEN REDIS_URL with a wrong password and RATE_LIMIT_PER_MINUTE WHEN the function serves
    a request, then answers /health THEN the request was served (fail open), anyone sees status
    misconfigured, a key holder `quota: misconfigured`, and no answer holds the password."""
    wrong = redis_server.url.replace(PASSWORD, "not-the-password")
    main = make_main({**env, "API_KEYS": KEY, "RATE_LIMIT_PER_MINUTE": "5", "REDIS_URL": wrong})
    served = ask(main, {"x-api-key": KEY})
    anonymous = ask(main, {}, "health")
    detailed = ask(main, {"x-api-key": KEY}, "health")
    assert anonymous["json"] == {"status": "misconfigured", "auth": "required"}
    assert detailed["json"]["quota"] == "misconfigured"
    assert served["statusCode"] == 200
    for answer in (anonymous, detailed, served):
        assert "not-the-password" not in answer["body"]


def test_a_working_redis_is_shared_on_health(make_main, env: dict[str, str],
                                             redis_server: RedisServer):
    """GIVEN REDIS_URL with the right password WHEN a key holder reads /health in a fresh
    container, then after an LLM request THEN `quota: unverified` (/health never asks Redis
    itself), then `shared`; status ok both times."""
    main = make_main({**env, "API_KEYS": KEY, "LLM_RATE_LIMIT_PER_MINUTE": "5",
                      "REDIS_URL": redis_server.url})
    before = ask(main, {"x-api-key": KEY}, "health")["json"]
    assert ask(main, {"x-api-key": KEY}, "chat_completions_llm")["statusCode"] == 200
    after = ask(main, {"x-api-key": KEY}, "health")["json"]
    assert (before["status"], before["quota"]) == ("ok", "unverified")
    assert (after["status"], after["quota"]) == ("ok", "shared")
