"""The service's app (router_service/_app.py): hang-ups, a graceful SIGTERM, the chat page."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import free_port
from tests.conftest import WORKER_TOKEN
from tests.fakes.stream_backend import StreamBackend
from tests.support.loopback import LoopbackServer
from tests.support.service import serve_main

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "small", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def slow_worker() -> Iterator[StreamBackend]:
    """A worker that streams 10 tokens, one each 0.2 s."""
    fake = StreamBackend("worker", every_s=0.2)
    with LoopbackServer(fake) as server:
        fake.url = server.url
        yield fake
        fake.release()


def test_a_client_that_hangs_up_ends_the_backends_stream(make_main,
                                                          slow_worker: StreamBackend):
    """GIVEN a worker streaming slowly through the service WHEN the client reads the first
    chunk and hangs up THEN the service hangs up on the worker too, long before its 2 s end."""
    main = make_main({"WORKER_URL": slow_worker.url, "WORKER_TOKEN": WORKER_TOKEN})
    service = serve_main(main, namespace="hang", port=0)
    try:
        started = time.monotonic()
        with httpx.Client(timeout=10) as client, client.stream(
                "POST", service.function_url + "/v1/chat/completions", json=BODY) as response:
            assert response.status_code == 200
            next(response.iter_lines())
        assert slow_worker.dropped.wait(1.5), "the worker's stream was never closed"
        assert time.monotonic() - started < 1.5
    finally:
        service.stop()


def test_sigterm_lets_a_stream_in_flight_finish(tmp_path: Path, slow_worker: StreamBackend):
    """GIVEN `python -m router_tools serve` relaying a 2 s stream WHEN it gets SIGTERM mid-stream
    THEN the stream still ends whole (finish_reason, x_chat, [DONE]), then the process exits."""
    env_file = tmp_path / "serve.env"
    env_file.write_text(f"WORKER_URL={slow_worker.url}\nWORKER_TOKEN={WORKER_TOKEN}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "router_tools", "serve", "--port", str(port),
                             "--namespace", "term", "--env-file", str(env_file)],
                            cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING"},
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/api/v1/web/term/chat/ask"
    try:
        with httpx.Client(timeout=10) as client:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:
                    if client.get(url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    slow_worker.released.wait(0.1)
            lines: list[str] = []
            with client.stream("POST", url + "/v1/chat/completions", json=BODY) as response:
                for line in response.iter_lines():
                    if not lines:
                        proc.send_signal(signal.SIGTERM)
                    lines.append(line)
        events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert '"x_chat"' in events[-2] and '"finish_reason":"stop"' in "".join(events)
        # uvicorn re-raises the captured SIGTERM once it has shut down, as a process should.
        assert proc.wait(15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


def test_the_chat_page_is_served_with_the_function_path(make_main, env: dict[str, str]):
    """GIVEN the service WHEN `/` is fetched THEN the chat page, pointing at the function path;
    an unknown path is a JSON 404 naming where the function lives."""
    service = serve_main(make_main(env), namespace="page", port=0)
    try:
        with httpx.Client(timeout=10) as client:
            page = client.get(f"http://127.0.0.1:{service.port}/")
            lost = client.get(f"http://127.0.0.1:{service.port}/nope")
        assert page.status_code == 200 and "/api/v1/web/page/chat/ask" in page.text
        assert lost.status_code == 404 and lost.json()["error"]["code"] == "not_found"
    finally:
        service.stop()


def test_a_chunked_body_over_1_mb_is_refused_while_reading(make_main, env: dict[str, str],
                                                           worker):
    """GIVEN the service WHEN a body with no Content-Length streams past 1 MB THEN 413 JSON
    (the limit is enforced while reading, not after), and no backend sees a request."""
    service = serve_main(make_main(env), namespace="big", port=0)

    def pieces() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 32_768

    try:
        with httpx.Client(timeout=10) as client:
            answer = client.post(service.function_url + "/v1/chat/completions",
                                 content=pieces(), headers={"content-type": "application/json"})
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"
        assert worker.generation_requests() == 0
    finally:
        service.stop()


def test_the_public_names_are_pinned():
    """GIVEN the service package WHEN its public names are listed THEN they are exactly these,
    sorted: a name added or dropped is a decision, not a drift."""
    import router_service

    # Issue 24 added the command line's pieces and the metrics, which the tools and the
    # benchmarks used from private modules before.
    assert router_service.__all__ == ["Door", "RouterMetrics", "RouterService", "Service",
                                      "ServiceLimits", "UvicornHost", "add_serve_arguments",
                                      "function_limits", "load_environment", "read_env_file",
                                      "serve"]
    assert router_service.__all__ == sorted(router_service.__all__)


@pytest.mark.parametrize(("variable", "value"), [
    ("MAX_CONNECTIONS_PER_ADDRESS", "lots"),
    ("MAX_CONNECTIONS_PER_ADDRESS", "5000"),  # more than MAX_CONNECTIONS
    ("HEADER_TIMEOUT_MS", "0"),
    ("RESERVED_CONNECTIONS", "2000"),  # not below MAX_CONNECTIONS
    ("MAX_HEADER_BYTES", "10"),
    ("MAX_HEADER_COUNT", "lots"),
    ("WRITE_TIMEOUT_MS", "0"),
])
def test_a_bad_door_setting_stops_the_service_naming_it(tmp_path: Path, variable: str,
                                                        value: str):
    """GIVEN a bad door setting WHEN `python -m router_service` starts (as router/Dockerfile
    runs it) THEN it exits 2 before listening, naming the variable but never its value."""
    env = {**os.environ, "WORKER_URL": "http://127.0.0.1:9", variable: value}
    done = subprocess.run([sys.executable, "-m", "router_service", "--port", "0",
                           "--env-file", ""], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert variable in done.stderr and f"={value}" not in done.stderr


def test_the_images_files_alone_serve(tmp_path: Path, worker):
    """GIVEN only what router/Dockerfile copies (router/, router_service/, project.yml), no
    router_tools WHEN `python -m router_service` runs there, as the image's CMD does THEN it
    serves /health and a chat request, and stops on SIGTERM."""
    for part in ("router", "router_service"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "Dockerfile*"))
    shutil.copy(ROOT / "project.yml", tmp_path / "project.yml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "LOG_LEVEL": "WARNING"})
    proc = subprocess.Popen([sys.executable, "-m", "router_service", "--port", str(port),
                             "--namespace", "app", "--env-file", ""], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/api/v1/web/app/chat/ask"
    try:
        with httpx.Client(timeout=10) as client:
            end = time.monotonic() + 30
            health = None
            while time.monotonic() < end and proc.poll() is None:
                try:
                    health = client.get(url + "/health")
                    break
                except httpx.HTTPError:
                    worker.released.wait(0.1)
            assert health is not None and health.status_code == 200
            chat = client.post(url + "/v1/chat/completions", json={**BODY, "stream": False})
        assert chat.status_code == 200 and chat.headers["x-chat-backend"] == "worker"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert "router_tools" not in stderr
