"""`make run` end to end: the real entry point as a subprocess, real SmolLM2, a real browser.

One stack (started once for this module, as `make run` starts it) serves the tests in order:
the openai client through the function URL, the chat page in headless Chromium, the demo tour,
and last, Ctrl-C (SIGINT) with the check that no child process is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router_tools.cli import main
from router_tools.stack_plan import ROOT
from tests.support.procs import children_of

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 240.0
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@dataclass
class RunningStack:
    """The `make run` process, its record and its output files."""

    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    folder: Path
    ready_s: float

    @property
    def stdout(self) -> str:
        """What the stack printed on stdout so far (the banner)."""
        return (self.folder / "stdout.txt").read_text()

    @property
    def stderr(self) -> str:
        """Progress and the parts' logs so far."""
        return (self.folder / "stderr.txt").read_text()


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes, in MiB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """`python -m router_tools stack` (the `make run` entry point) on free ports, until ready."""
    folder = tmp_path_factory.mktemp("stack")
    state_file = folder / "stack.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
    env.update({"STACK_PORT": "0", "STACK_WAKE_S": "2"})
    with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "router_tools", "stack", "--env-file", str(folder / "none.env"),
             "--state-file", str(state_file)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        # Readiness: the state file appears once every part answers its health check.
        while not state_file.exists():
            assert process.poll() is None, (folder / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() - started < READY_TIMEOUT_S, "the stack was not ready"
            threading.Event().wait(0.25)
        ready_s = time.monotonic() - started
        info = json.loads(state_file.read_text())
        yield RunningStack(process, info, folder, ready_s)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_make_run_answers_the_openai_client_with_smollm2(stack: RunningStack):
    """GIVEN `make run`'s entry point, started as a subprocess and ready
    WHEN the openai client chats through the printed function URL
    THEN the real SmolLM2 on the worker answers, and the headers say so; and the /metrics
    URLs the banner prints count that answer (the router's), and its tokens (the worker's,
    behind its token, on llama.cpp)."""
    from openai import OpenAI

    url = stack.info["function_url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v1/web/local/chat/ask", url)
    banner = stack.stdout
    assert f"function   {url}" in banner and f"curl -si {url}/v1/chat/completions" in banner
    assert f'OpenAI(base_url="{url}/v1"' in banner
    client = OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0, timeout=60)
    try:
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model="auto", max_tokens=16, temperature=0,
            messages=[{"role": "user", "content": "Hi! What is your name?"}])
        latency_ms = (time.monotonic() - started) * 1000
    finally:
        client.close()
    reply = raw.parse()
    assert raw.headers["x-chat-backend"] == "worker"
    assert raw.headers["x-chat-route-reason"] == "default"
    assert reply.model == "SmolLM2-135M-Instruct"
    assert (reply.choices[0].message.content or "").strip()
    metrics = {name: stack.info[f"{name}metrics_url"] for name in ("", "worker_", "space_")}
    assert all(url in banner for url in metrics.values())
    router_text = httpx.get(metrics[""], timeout=10).text
    assert 'backend="worker",fallback="none",route="worker",status="200"} 1.0' in router_text
    worker_auth = {"authorization": f"Bearer {stack.info['worker_token']}"}
    worker_text = httpx.get(metrics["worker_"], headers=worker_auth, timeout=10).text
    assert 'ai_space_engine_info{device="cpu",engine="llama.cpp"} 1.0' in worker_text
    assert reply.usage is not None
    out_tokens = f'ai_space_tokens_total{{direction="out"}} {reply.usage.completion_tokens}.0'
    assert out_tokens in worker_text
    sys.stderr.write(f"\nstack ready in {stack.ready_s:.1f} s; chat answered in "
                     f"{latency_ms:.0f} ms\n")


def test_chat_page_in_headless_chromium(stack: RunningStack, tmp_path: Path):
    """GIVEN the chat page at the gateway's root, in headless Chromium
    WHEN a message is typed and sent THEN the DOM shows SmolLM2's answer, the backend that
    answered (worker) and the latency; a screenshot is saved next to the test's files."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing; `make test` installs them")
        pytest.skip("needs Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--window-size=1100,800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(stack.info["page_url"])
        assert driver.title == "chat-router"
        path = driver.find_element(By.ID, "function-path").text
        assert path == "/api/v1/web/local/chat/ask"
        box = driver.find_element(By.ID, "input")
        box.send_keys("Hello! Who are you?")
        driver.find_element(By.ID, "send").click()
        answer = WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant, .msg.error"))
        content = answer.find_element(By.CSS_SELECTOR, ".content").text
        backend = answer.find_element(By.CSS_SELECTOR, "[data-testid=backend]").text
        latency = answer.find_element(By.CSS_SELECTOR, "[data-testid=latency]").text
        driver.save_screenshot(str(tmp_path / "chat-page.png"))
        assert "error" not in (answer.get_attribute("class") or ""), content
        assert content.strip()
        assert backend == "worker" and answer.get_attribute("data-backend") == "worker"
        assert re.fullmatch(r"\d+ ms", latency)
        health = WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.ID, "health").get_attribute("class") or None)
        assert health == "ok"
    finally:
        driver.quit()
    assert (tmp_path / "chat-page.png").stat().st_size > 10_000
    sys.stderr.write(f"\nscreenshot: {tmp_path / 'chat-page.png'}\n")


def test_demo_tours_routing_sleep_fallback_and_wake(stack: RunningStack,
                                                    capsys: pytest.CaptureFixture[str]):
    """GIVEN the running stack (found through its state file)
    WHEN `python -m router_tools demo` runs THEN a short question goes to the worker, a writing task
    to the Space; the Space sleeps and its URL serves the sleeping page; the task falls back to
    the worker (space_sleeping); the router wakes the Space through the Hub API; the Space
    answers again. Each step shows its backend, reason and latency."""
    state_file = stack.folder / "stack.json"
    code = main(["demo", "--state-file", str(state_file), "--max-tokens", "12"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    rows = re.findall(r"^\| (.+?) \| (\w+) \| (\S+) \((\S+)\) \| (\S+) \| (\d+) ms \|$", out,
                      re.MULTILINE)
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("small", "worker", "default", "-"),
        ("llm", "space", "task:write", "-"),
        ("llm while asleep", "worker", "task:write", "space_sleeping"),
        ("llm after wake", "space", "task:write", "-"),
    ]
    assert "answers HTTP 200 text/html (HF's sleeping page), not JSON" in out
    assert "SLEEPING (sleep requested) -> APP_STARTING (restart) -> RUNNING (app healthy)" in out
    sys.stderr.write("\n" + out)


def _chat_engine(stack: RunningStack) -> int:
    """The worker's chat llama-server (the local Space may run one too: not its)."""
    port = stack.info["worker_url"].rsplit(":", 1)[1]
    worker = [p for p in children_of(stack.process.pid)
              if f"PORT={port}\0".encode() in Path(f"/proc/{p}/environ").read_bytes()]
    assert len(worker) == 1, worker
    engines = [p for p in children_of(worker[0])
               if _cmdline(Path(f"/proc/{p}")).split(b" ")[0].endswith(b"llama-server")
               and b"--embeddings" not in _cmdline(Path(f"/proc/{p}"))]
    assert len(engines) == 1, engines
    return engines[0]


def test_a_killed_worker_engine_fails_over_and_comes_back(stack: RunningStack):
    """GIVEN the stack streaming a worker answer WHEN the worker's chat engine (llama-server)
    is killed mid-stream THEN the worker's /health says error, the router fails over to the
    Space and the caller's stream still ends with an answer; the worker restarts its engine
    and is ready again."""
    from openai import OpenAI

    engine = killed = _chat_engine(stack)
    health = f"{stack.info['worker_url']}/health"
    assert httpx.get(health, timeout=10).status_code == 200
    client = OpenAI(base_url=f"{stack.info['function_url']}/v1", api_key="local",
                    max_retries=0, timeout=120)
    try:
        stream = client.chat.completions.create(
            model="auto", max_tokens=96, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Hi! Tell me about the sea."}])
        text, finish = "", None
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
            if text and engine:
                os.kill(engine, signal.SIGKILL)
                engine = 0
                deadline = time.monotonic() + 5
                while httpx.get(health, timeout=10).json()["status"] != "error":
                    assert time.monotonic() < deadline, "the worker's /health never said error"
    finally:
        client.close()
    assert engine == 0, "the answer ended before the engine could be killed"
    assert finish is not None and len(text.split()) > 3, (finish, text)
    deadline = time.monotonic() + 60
    while httpx.get(health, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the worker was not ready again after the restart"
        threading.Event().wait(0.1)
    assert _chat_engine(stack) != killed


def test_ctrl_c_stops_every_part_and_leaves_no_process(stack: RunningStack):
    """GIVEN the running stack and its four parts WHEN it gets SIGINT (Ctrl-C)
    THEN it exits 0 after stopping each part, and no child process is left."""
    parts = children_of(stack.process.pid)
    assert len(parts) == 4, parts
    memory = rss_mib([stack.process.pid, *parts])
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(30) == 0, stack.stderr[-3000:]
    assert not [pid for pid in parts if alive(pid)]
    assert children_of(stack.process.pid) == []
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                 and f"guard {stack.process.pid} ".encode() in _cmdline(p)]
    assert leftovers == []
    assert stack.stderr.endswith("stopped: every part has exited\n")
    assert not (stack.folder / "stack.json").exists()
    sys.stderr.write(f"\nwhole stack resident memory before stop: {memory:.0f} MiB\n")


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""

