"""Who may call: API keys, signed client tokens (JWT HS256), and `Origin`, which proves nothing."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from router_tools.cli import main as cli_main
from router_tools.token_cli import mint
from tests.conftest import Main
from tests.fakes.openai_backend import FakeBackend
from tests.support.access import SECRET, ask, bearer

ORIGIN = "https://app.example.com"
OTHER_SECRET = "another-secret-that-is-long-enough-42"
KEY = "key-alpha-123456"


def unsigned(claims: dict[str, Any]) -> str:
    """An `alg: none` token, as an attacker would write it by hand."""
    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def hs512(claims: dict[str, Any]) -> str:
    """A token signed with the right secret but another algorithm (the pin must refuse it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)  # weak for HS512, yes
        return jwt.encode(claims, SECRET, algorithm="HS512")


@pytest.fixture
def token_main(make_main: Callable[[dict[str, str]], Main], env: dict[str, str]) -> Main:
    """The real handler with CLIENT_TOKEN_SECRET set (and no API keys)."""
    return make_main({**env, "CLIENT_TOKEN_SECRET": SECRET})


def test_forged_origin_without_credential_gets_401(make_main, env, worker: FakeBackend):
    """GIVEN API_KEYS, or CLIENT_TOKEN_SECRET WHEN a request carries an allowlisted Origin (which
    curl can forge) and no credential THEN 401, the backend is not called, and the browser can
    still read why (CORS headers)."""
    for extra, code in (({"API_KEYS": KEY, "CLIENT_TOKEN_SECRET": ""}, "invalid_api_key"),
                        ({"API_KEYS": "", "CLIENT_TOKEN_SECRET": SECRET}, "invalid_token")):
        main = make_main({**env, **extra})
        calls = worker.generation_requests()
        answer = ask(main, {"origin": ORIGIN})
        assert answer["statusCode"] == 401
        assert answer["json"]["error"]["code"] == code
        assert answer["headers"]["access-control-allow-origin"] == ORIGIN
        assert worker.generation_requests() == calls


def test_client_tokens_each_get_the_right_answer(token_main: Main):
    """GIVEN CLIENT_TOKEN_SECRET WHEN good, expired, wrong-secret, alg-none, exp-less, sub-less,
    empty-sub, too-long-lived, HS512 and garbage tokens are sent THEN 200 for the good one (and
    for a 500-character `sub`), and 401 invalid_token for each of the others."""
    now = time.time()
    good = mint(SECRET, "alice", 600)
    cases = {
        "good": good,
        "expired": mint(SECRET, "alice", 600, now=now - 3_600),
        "wrong_secret": mint(OTHER_SECRET, "alice", 600),
        "alg_none": unsigned({"sub": "alice", "exp": int(now) + 600}),
        "missing_exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        "missing_sub": jwt.encode({"exp": int(now) + 600}, SECRET, algorithm="HS256"),
        "empty_sub": jwt.encode({"sub": "", "exp": int(now) + 600}, SECRET, algorithm="HS256"),
        "too_long_lived": mint(SECRET, "alice", 2 * 3_600),
        "not_a_jwt": "not-a-token",
        "hs512": hs512({"sub": "alice", "exp": int(now) + 600}),
    }
    answers = {name: ask(token_main, {"origin": ORIGIN, **bearer(token)})
               for name, token in cases.items()}
    assert answers.pop("good")["statusCode"] == 200
    long_sub = mint(SECRET, "u" * 500 + "\n", 600)  # odd subjects are hashed to a bounded key
    assert ask(token_main, bearer(long_sub))["statusCode"] == 200
    for name, answer in answers.items():
        assert (name, answer["statusCode"]) == (name, 401)
        assert answer["json"]["error"]["code"] == "invalid_token", name
    assert "expired" in answers["expired"]["json"]["error"]["message"]
    assert "'exp'" in answers["missing_exp"]["json"]["error"]["message"]
    for answer in answers.values():  # no part of a token is echoed back
        assert good.split(".")[2] not in answer["body"]


def test_token_clock_skew_leeway(token_main: Main):
    """GIVEN a 30 s leeway WHEN a token expired 10 s ago, or runs 10 s past the longest life
    THEN both are accepted (clocks differ a little); 90 s past the longest life THEN 401."""
    now = time.time()
    just_expired = mint(SECRET, "bob", 60, now=now - 70)
    slightly_long = mint(SECRET, "bob", 3_600 + 10)
    too_long = mint(SECRET, "bob", 3_600 + 90)
    assert ask(token_main, bearer(just_expired))["statusCode"] == 200
    assert ask(token_main, bearer(slightly_long))["statusCode"] == 200
    assert ask(token_main, bearer(too_long))["statusCode"] == 401


def test_keys_and_tokens_together(make_main, env):
    """GIVEN API_KEYS and CLIENT_TOKEN_SECRET WHEN a server sends its key, a browser its token,
    or someone a wrong key THEN 200, 200, 401 invalid_api_key; /health says auth is required."""
    main = make_main({**env, "API_KEYS": KEY, "CLIENT_TOKEN_SECRET": SECRET})
    assert ask(main, {"x-api-key": KEY})["statusCode"] == 200
    assert ask(main, bearer(mint(SECRET, "carol", 300)))["statusCode"] == 200
    wrong = ask(main, bearer("key-alpha-654321"))
    assert (wrong["statusCode"], wrong["json"]["error"]["code"]) == (401, "invalid_api_key")
    health = ask(main, {}, "health")
    assert (health["statusCode"], health["json"]["auth"]) == (200, "required")


def test_open_function_says_so_on_health(main: Main):
    """GIVEN neither API_KEYS nor CLIENT_TOKEN_SECRET WHEN /health is read, and a request sent
    with no credential THEN `"auth": "open"`, and the request is served."""
    assert ask(main, {}, "health")["json"]["auth"] == "open"
    assert ask(main, {})["statusCode"] == 200


def test_short_secret_is_refused(make_main, env):
    """GIVEN a CLIENT_TOKEN_SECRET under 32 bytes (too weak for HS256) WHEN the function starts
    THEN it answers 503 misconfigured, naming the variable and never its value."""
    main = make_main({**env, "CLIENT_TOKEN_SECRET": "short-secret"})
    answer = ask(main, {})
    assert (answer["statusCode"], answer["json"]["error"]["code"]) == (503, "misconfigured")
    assert "CLIENT_TOKEN_SECRET" in answer["body"]
    assert "short-secret" not in answer["body"]


def test_token_command_mints_what_the_function_accepts(token_main: Main, monkeypatch,
                                                       capsys: pytest.CaptureFixture[str]):
    """GIVEN CLIENT_TOKEN_SECRET in the environment WHEN `python -m router_tools token --sub dave
    --ttl 600` runs THEN it prints a token the function accepts; a --ttl over
    CLIENT_TOKEN_MAX_TTL_S, or no secret, is refused with exit code 2."""
    monkeypatch.setenv("CLIENT_TOKEN_SECRET", SECRET)
    assert cli_main(["token", "--sub", "dave", "--ttl", "600", "--env-file", ""]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "dave"
    assert ask(token_main, bearer(token))["statusCode"] == 200
    assert cli_main(["token", "--sub", "dave", "--ttl", "7200", "--env-file", ""]) == 2
    monkeypatch.delenv("CLIENT_TOKEN_SECRET")
    assert cli_main(["token", "--sub", "dave", "--env-file", ""]) == 2
    assert "CLIENT_TOKEN_SECRET" in capsys.readouterr().err


def test_jwt_and_redis_stay_off_the_cold_path(tmp_path):
    """GIVEN CLIENT_TOKEN_SECRET and quotas WHEN a fresh `ask` answers /health, then (without
    REDIS_URL) one token-checked request THEN /health imported neither PyJWT nor redis-py, and
    the request imported PyJWT but still not redis-py (it loads only when REDIS_URL is set)."""
    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys, json, importlib.util\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        f"spec = importlib.util.spec_from_file_location('e', {str(root / 'packages/chat/ask/__main__.py')!r})\n"  # noqa: E501
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "def get(path, headers):\n"
        "    ev = {'http': {'method': 'GET', 'path': path, 'headers': headers, 'body': ''}}\n"
        "    return m.main(ev, None)['statusCode']\n"
        "seen = {}\n"
        "seen['health'] = [get('/health', {}), 'jwt' in sys.modules, 'redis' in sys.modules]\n"
        "token = {'authorization': 'Bearer ' + sys.argv[1]}\n"
        "seen['models'] = [get('/v1/models', token), 'jwt' in sys.modules,\n"
        "                  'redis' in sys.modules]\n"
        "print(json.dumps(seen))\n"
    )
    ran = subprocess.run([sys.executable, "-c", script, mint(SECRET, "frank", 300)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={"WORKER_URL": "http://127.0.0.1:9", "CLIENT_TOKEN_SECRET": SECRET,
                              "RATE_LIMIT_PER_MINUTE": "10"})
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"health": [200, False, False],
                                      "models": [200, True, False]}
