"""`python -m router_tools demo` (`make demo`): a tour of the local stack, step by step.

Small versus llm routing; then the local Space goes to sleep (its edge serves the sleeping
page), a request falls back to the worker, the router wakes the Space through the Hub API, and
the Space answers again. Each step prints its backend, reason and latency. It uses a running
`make run` stack (found through its state file) or starts its own and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


class DemoError(Exception):
    """The tour cannot go on; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Step:
    """One request of the tour, as the caller saw it."""

    title: str
    status: int
    backend: str
    route: str
    reason: str
    fallback: str
    latency_ms: float
    answer: str


class Tour:
    """The demo's requests against one running stack (its state-file record)."""

    def __init__(self, info: dict[str, Any], *, out: IO[str] | None = None, max_tokens: int = 24,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.info = info
        self.out = out or sys.stdout
        self.max_tokens = max_tokens
        self.clock = clock
        self.client = httpx.Client(timeout=60.0, trust_env=False)
        self.hub_headers = {"authorization": f"Bearer {info['hub_token']}"}
        self.steps: list[Step] = []

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def chat(self, title: str, model: str, prompt: str) -> Step:
        """Send one chat completion through the function URL and print what answered."""
        body = {"model": model, "max_tokens": self.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}
        started = self.clock()
        response = self.client.post(f"{self.info['function_url']}/v1/chat/completions",
                                    json=body)
        latency_ms = (self.clock() - started) * 1000
        try:
            data = response.json()
            answer = str(data["choices"][0]["message"]["content"]) if response.is_success \
                else str(data.get("error", {}).get("message", ""))
        except (ValueError, KeyError, IndexError, TypeError):
            answer = response.text[:200]
        h = response.headers
        step = Step(title, response.status_code, h.get("x-chat-backend", "-"),
                    h.get("x-chat-route", "-"), h.get("x-chat-route-reason", "-"),
                    h.get("x-chat-fallback", ""), round(latency_ms, 1),
                    " ".join(answer.split()))
        self.steps.append(step)
        fallback = f"  fallback={step.fallback}" if step.fallback else ""
        self._say(f"   -> HTTP {step.status}  backend={step.backend}  "
                  f"route={step.route} ({step.reason}){fallback}  {latency_ms:.0f} ms")
        self._say(f"      \"{step.answer[:100]}\"")
        return step

    def hub(self, method: str, path: str) -> dict[str, Any]:
        """Call the Hub API stand-in (the edge) with the local Hub token."""
        response = self.client.request(method, f"{self.info['hub_endpoint']}{path}",
                                       headers=self.hub_headers)
        if response.status_code != 200:
            raise DemoError(f"the Hub stand-in answered HTTP {response.status_code} to {path}")
        data: dict[str, Any] = response.json()
        return data

    def stage(self) -> str:
        """The Space's stage, as the Hub reports it."""
        return str(self.hub("GET", f"/api/spaces/{self.info['space_id']}/runtime")["stage"])

    def sleep_space(self) -> None:
        """Put the Space to sleep and show what its URL now answers."""
        self.hub("POST", "/_local/sleep")
        page = self.client.get(f"{self.info['space_url']}/v1/models", headers={
            "x-hf-authorization": f"Bearer {self.info['hub_token']}",
            "authorization": f"Bearer {self.info['space_token']}"})
        kind = page.headers.get("content-type", "").split(";")[0]
        title = "sleeping page" if b"sleeping" in page.content.lower() else "page"
        self._say(f"   -> stage {self.stage()}; the Space's URL answers HTTP "
                  f"{page.status_code} {kind} (HF's {title}), not JSON")

    def wait_running(self, timeout_s: float = 120.0) -> float:
        """Follow the wake the router asked for until the Space runs; return the seconds."""
        started = self.clock()
        seen = ""
        restarted_ourselves = False
        while True:
            stage = self.stage()
            now = self.clock() - started
            if stage != seen:
                self._say(f"   {now:5.1f} s  stage {stage}")
                seen = stage
            if stage == "RUNNING":
                return now
            if stage == "SLEEPING" and now >= 10.0 and not restarted_ourselves:
                self._say("   the router has not asked for a wake (WAKE_COOLDOWN_S?); "
                          "restarting through the Hub API")
                self.hub("POST", f"/api/spaces/{self.info['space_id']}/restart")
                restarted_ourselves = True
            if now >= timeout_s:
                raise DemoError(f"the Space is still {stage} after {timeout_s:.0f} s")
            time.sleep(0.25)  # polling the stage, as `space wake` does

    def wake_story(self) -> str:
        """Who moved the Space through which stages, from the edge's record."""
        state = self.hub("GET", "/_local/state")
        history = state["history"]
        last_sleep = max(i for i, h in enumerate(history) if h["stage"] == "SLEEPING")
        return " -> ".join(f"{h['stage']} ({h['why']})" for h in history[last_sleep:])

    def run(self) -> list[Step]:
        """The whole tour; raise DemoError when the stack does not behave as described."""
        self._say(f"chat-router demo: {self.info['function_url']}\n")
        self._say("1. A short question: `auto` sends it to the small model on the worker")
        self.chat("small", "auto", "Hi! In one sentence, what can you do?")
        self._say("2. A writing task: `auto` sends it to the LLM on the Space")
        self.chat("llm", "auto", "Write a two-line poem about the sea.")
        if self.stage() != "RUNNING":
            raise DemoError("the Space is not RUNNING; start from a ready stack")
        self._say("3. The Space goes to sleep (as a Space does after its sleep time)")
        self.sleep_space()
        self._say("4. The same writing task while it sleeps: the worker answers at once, and "
                  "the router asks the Hub to wake the Space")
        asleep = self.chat("llm while asleep", "auto", "Write a two-line poem about the sea.")
        self._say("5. The wake, as the Hub reports it")
        woke_s = self.wait_running()
        self._say(f"   -> {self.wake_story()}; running again after {woke_s:.1f} s")
        self._say("6. The writing task again: the Space answers")
        again = self.chat("llm after wake", "auto", "Write a two-line poem about the sea.")
        self._say("\n| step | backend | route (reason) | fallback | latency |")
        self._say("|---|---|---|---|---|")
        for step in self.steps:
            self._say(f"| {step.title} | {step.backend} | {step.route} ({step.reason}) | "
                      f"{step.fallback or '-'} | {step.latency_ms:.0f} ms |")
        wanted = [("small", "worker"), ("llm", "space"), ("llm while asleep", "worker"),
                  ("llm after wake", "space")]
        got = [(s.title, s.backend) for s in self.steps]
        if got != wanted or asleep.fallback != "space_sleeping" or again.fallback:
            raise DemoError("the answers did not follow the expected routes (see the table)")
        return self.steps


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(path: Path) -> dict[str, Any] | None:
    """A running stack's record, or None when none is running there."""
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if _alive(int(info.get("pid", 0))) else None


class OwnStack:
    """A stack the demo starts for itself (any free port) and stops with SIGINT."""

    def __init__(self, env_file: str, err: IO[str] | None = None) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="chat-demo-")
        self.state_file = Path(self.folder.name) / "stack.json"
        self.err = err or sys.stderr
        self.quiet = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "router_tools", "stack", "--port", "0", "--env-file", env_file,
             "--state-file", str(self.state_file)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        threading.Thread(target=self._relay, daemon=True).start()

    def _relay(self) -> None:
        # The stack's progress is shown until it is ready; its request log after that is not.
        assert self.process.stderr is not None
        for line in iter(self.process.stderr.readline, b""):
            if not self.quiet:
                self.err.write(line.decode("utf-8", "replace"))
                self.err.flush()

    def wait_ready(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Wait for the stack's state file, which appears once every part is ready."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            info = read_state(self.state_file)
            if info is not None:
                self.quiet = True
                return info
            if self.process.poll() is not None:
                raise DemoError(f"the stack exited with code {self.process.returncode}")
            time.sleep(0.5)  # polling for readiness, with a deadline
        raise DemoError(f"the stack was not ready after {timeout_s:.0f} s")

    def stop(self) -> int:
        """Ctrl-C the stack and wait for it; return its exit code."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.folder.cleanup()
        return self.process.returncode


def main(args: argparse.Namespace) -> int:
    """Run the tour against a running stack, or a stack of its own; the exit code."""
    from router_tools.stack_plan import default_state_file

    state_file = Path(args.state_file) if args.state_file else default_state_file()
    info = read_state(state_file)
    own: OwnStack | None = None
    try:
        if info is None:
            sys.stderr.write("no running stack found (make run); starting one for the demo\n")
            own = OwnStack(args.env_file)
            info = own.wait_ready()
        tour = Tour(info, max_tokens=args.max_tokens)
        try:
            tour.run()
        finally:
            tour.close()
    except (DemoError, httpx.HTTPError) as exc:
        detail = str(exc) if isinstance(exc, DemoError) else f"{type(exc).__name__}"
        sys.stderr.write(f"error: {detail}\n")
        return 1
    finally:
        if own is not None:
            own.stop()
    return 0
