"""The service's quotas (issue 19, items 3, 4 and 5): the GPU budget on a stream failover, a
slow Redis that must not hold the event loop, a refused Redis login, and client addresses from
the connection (X-Forwarded-For only from TRUSTED_PROXIES). Real uvicorn, real redis-server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.common import free_port
from router._config import Settings
from router._errors import ConfigError
from tests.fakes.stream_backend import StreamBackend
from tests.support.loopback import LoopbackServer
from tests.support.redis_server import PASSWORD, RedisServer
from tests.support.service import serve_main
from tests.support.tcp_proxy import HoldingProxy

KEY = "key-alpha-123456"
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0  # bounds on waiting for events that must happen; never reached when all is well


@pytest.fixture
def streams() -> Iterator[tuple[StreamBackend, StreamBackend]]:
    """A worker whose streams are cut after 3 tokens, and a healthy Space, both streaming."""
    worker, space = StreamBackend("worker", mode="cut"), StreamBackend("space")
    with LoopbackServer(worker) as w, LoopbackServer(space) as s:
        worker.url, space.url = w.url, s.url
        yield worker, space


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """The SSE events of a finished stream, `[DONE]` left out."""
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_a_stream_failover_to_the_space_is_counted(
        make_main, streams: tuple[StreamBackend, StreamBackend], redis_server: RedisServer):
    """GIVEN the service, LLM_RATE_LIMIT_PER_MINUTE=1 in Redis, a worker that cuts its streams
    after 3 tokens and a healthy Space WHEN one client streams two `small` chats THEN the first
    is continued by the Space (counted); the second, over the GPU budget, ends with a
    rate_limited error event and no [DONE], and the Space was asked once."""
    worker, space = streams
    main = make_main({"WORKER_URL": worker.url, "SPACE_URL": space.url,
                      "LLM_RATE_LIMIT_PER_MINUTE": "1", "REDIS_URL": redis_server.url})
    service = serve_main(main, namespace="budget", port=0)
    try:
        with httpx.Client(base_url=service.function_url, timeout=WAIT_S) as client:
            answers = [client.post("/v1/chat/completions", json={**CHAT, "stream": True})
                       for _ in range(2)]
    finally:
        service.stop()
    first, second = (events(answer) for answer in answers)
    assert first[-1]["x_chat"]["backend"] == "space"
    assert "data: [DONE]" in answers[0].text
    assert second[-1]["error"]["code"] == "rate_limited"
    assert "data: [DONE]" not in answers[1].text
    assert len(space.bodies) == 1
    assert len(worker.bodies) == 2


def test_a_slow_redis_holds_only_the_request_that_waits_for_it(
        make_main, env: dict[str, str], redis_server: RedisServer):
    """GIVEN the service counting RATE_LIMIT_PER_MINUTE in a real redis-server behind a proxy
    that can hold Redis' replies, REDIS_TIMEOUT_MS=1000 WHEN one request's quota call is waiting
    for its held reply THEN /health is answered meanwhile, while that call still waits (its
    Redis connection still open), and the waiting request is served once the reply comes."""
    with HoldingProxy(("127.0.0.1", redis_server.port)) as proxy:
        url = f"redis://:{PASSWORD}@127.0.0.1:{proxy.port}/0"
        main = make_main({**env, "API_KEYS": KEY, "RATE_LIMIT_PER_MINUTE": "100",
                          "REDIS_URL": url, "REDIS_TIMEOUT_MS": "1000"})
        service = serve_main(main, namespace="slow", port=0)
        answers: list[httpx.Response] = []
        try:
            with httpx.Client(base_url=service.function_url, timeout=WAIT_S) as client:
                assert client.post("/v1/chat/completions", json=CHAT,
                                   headers={"x-api-key": KEY}).status_code == 200
                proxy.hold()
                waiting = threading.Thread(target=lambda: answers.append(client.post(
                    "/v1/chat/completions", json=CHAT, headers={"x-api-key": KEY})))
                waiting.start()
                assert proxy.sent.wait(WAIT_S), "the quota call never reached Redis"
                health = client.get("/health")
                still_waiting = waiting.is_alive() and not proxy.client_closed.is_set()
                proxy.release()
                waiting.join(WAIT_S)
        finally:
            proxy.release()
            service.stop()
    assert health.status_code == 200
    assert still_waiting, "/health was answered only after the quota call gave up"
    assert [answer.status_code for answer in answers] == [200]


def test_a_refused_redis_login_stops_the_service_from_starting(
        make_main, env: dict[str, str], redis_server: RedisServer, tmp_path: Path):
    """GIVEN REDIS_URL with a wrong password and a quota set WHEN `python -m router_tools serve`
    starts THEN it refuses to (exit code 3, quotas would be off in silence), says why without
    the password; with Redis merely down, the service starts and serves (fail open)."""
    wrong = redis_server.url.replace(PASSWORD, "not-the-password")
    env_file = tmp_path / "serve.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {
        **env, "RATE_LIMIT_PER_MINUTE": "5", "REDIS_URL": wrong}.items()))
    done = subprocess.run([sys.executable, "-m", "router_tools", "serve", "--port",
                           str(free_port()), "--env-file", str(env_file)], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 3
    assert "REDIS_URL: the quota store refused the login" in done.stderr
    assert "not-the-password" not in done.stdout + done.stderr
    redis_server.kill()
    main = make_main({**env, "RATE_LIMIT_PER_MINUTE": "5", "REDIS_URL": redis_server.url})
    service = serve_main(main, namespace="down", port=0)
    try:
        answer = httpx.post(service.function_url + "/v1/chat/completions", json=CHAT,
                            timeout=WAIT_S)
    finally:
        service.stop()
    assert answer.status_code == 200


def test_the_service_counts_the_connection_not_a_header(make_main, env: dict[str, str]):
    """GIVEN an open service with RATE_LIMIT_PER_MINUTE=2 and no TRUSTED_PROXIES WHEN one client
    sends 4 requests, each with another X-Forwarded-For THEN its address is the connection's:
    the 3rd and 4th get 429."""
    main = make_main({**env, "RATE_LIMIT_PER_MINUTE": "2"})
    service = serve_main(main, namespace="peer", port=0)
    try:
        with httpx.Client(base_url=service.function_url, timeout=WAIT_S) as client:
            statuses = [client.post("/v1/chat/completions", json=CHAT,
                                    headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code
                        for i in range(4)]
    finally:
        service.stop()
    assert statuses == [200, 200, 429, 429]


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(make_main, env: dict[str, str]):
    """GIVEN an open service with RATE_LIMIT_PER_MINUTE=2 behind a trusted proxy
    (TRUSTED_PROXIES=127.0.0.0/8, the test's own address) WHEN clients arrive through it THEN
    each address the proxy appended counts alone, and one that prepends a forged entry is still
    counted as the address the proxy saw (its 3rd request gets 429)."""
    main = make_main({**env, "RATE_LIMIT_PER_MINUTE": "2", "TRUSTED_PROXIES": "127.0.0.0/8"})
    service = serve_main(main, namespace="proxied", port=0)

    def through_proxy(client: httpx.Client, forwarded: str) -> int:
        return client.post("/v1/chat/completions", json=CHAT,
                           headers={"x-forwarded-for": forwarded}).status_code

    try:
        with httpx.Client(base_url=service.function_url, timeout=WAIT_S) as client:
            others = [through_proxy(client, f"198.51.100.{i}") for i in range(4)]
            forged = [through_proxy(client, f"192.0.2.{i}, 203.0.113.9") for i in range(3)]
    finally:
        service.stop()
    assert others == [200] * 4
    assert forged == [200, 200, 429]


def test_a_trusted_proxy_that_is_no_address_is_misconfigured():
    """GIVEN TRUSTED_PROXIES holding something that is no address or network WHEN the settings
    are read THEN ConfigError names the variable (a typo must not trust everyone, or no one)."""
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        Settings.from_env({"WORKER_URL": "http://127.0.0.1:1",
                           "TRUSTED_PROXIES": "10.0.0.0/8, app-platform-edge"})
    assert Settings.from_env({"WORKER_URL": "http://127.0.0.1:1",
                              "TRUSTED_PROXIES": "10.0.0.0/8, ::1"}).trusted_proxies == (
        "10.0.0.0/8", "::1")
