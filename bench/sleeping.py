"""A sleeping Space: the first answer through the router against waiting out the wake directly.

The Space is a loopback FakeBackend behind a FakeHub, wired as the Hub runs a Space: asleep it
serves Hugging Face's sleeping page (HTTP 200, HTML); a restart through the Hub's API starts it,
and while it starts (APP_STARTING) it answers 503; `sleep_s` after the restart the Hub reports
RUNNING and the Space answers chat requests again. Two such Spaces run side by side:

- through the router: an `llm` request to the `ask` handler, which falls back to the (instant)
  worker and asks the Hub to restart the Space in the background; then one `llm` request a
  second, as a user would send, until the Space itself answers one;
- directly: a user without the router restarts the Space through the Hub (the sleeping page's
  button) and re-sends the request with httpx once a second until the Space answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import ExitStack
from typing import Any

import httpx

from bench.common import median
from router import FunctionContext, WebFunction
from tests.fakes.hub import SERVING, STARTING, FakeHub
from tests.fakes.openai_backend import FakeBackend
from tests.support.loopback import LoopbackServer

log = logging.getLogger("bench.sleeping")
REPO = "owner/chat"
HF_TOKEN = "hf_bench"
SPACE_TOKEN = "space-token"
WORKER_TOKEN = "worker-token"
BODY = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
RETRY_S = 1.0


class SleepingSpace:
    """One Space and its Hub on loopback; a Hub restart wakes the Space `sleep_s` later."""

    def __init__(self, stack: ExitStack, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.space = FakeBackend("space", token=SPACE_TOKEN, mode="sleeping")
        self.hub = FakeHub(REPO, HF_TOKEN, stage="SLEEPING")
        self.restarted_at: float | None = None
        self.running_at: float | None = None
        self._timer: threading.Timer | None = None
        self.hub.listeners.append(self._on_stage)
        self.space_url = stack.enter_context(LoopbackServer(self.space)).url
        self.hub_url = stack.enter_context(LoopbackServer(self.hub)).url
        stack.callback(self._cancel)

    def _on_stage(self, stage: str) -> None:
        if stage in STARTING and self._timer is None:
            self.restarted_at = time.perf_counter()
            self.space.mode = "status:503"
            self._timer = threading.Timer(self.sleep_s, self.hub.advance)
            self._timer.daemon = True
            self._timer.start()
        elif stage == SERVING:
            self.running_at = time.perf_counter()
            self.space.mode = "ok"

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _event() -> dict[str, Any]:
    return {"http": {"method": "POST", "path": "/v1/chat/completions",
                     "headers": {"content-type": "application/json"},
                     "body": json.dumps(BODY), "isBase64Encoded": False}}


def _direct(space: SleepingSpace, out: dict[str, float]) -> None:
    """A user without the router: restart through the Hub, then retry until an answer."""
    started = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        client.post(f"{space.hub_url}/api/spaces/{REPO}/restart",
                    headers={"authorization": f"Bearer {HF_TOKEN}"}).raise_for_status()
        tries = 0
        while True:
            tries += 1
            answer = client.post(f"{space.space_url}/v1/chat/completions", json=BODY,
                                 headers={"authorization": f"Bearer {SPACE_TOKEN}"})
            if answer.status_code == 200 and "json" in answer.headers.get("content-type", ""):
                break
            time.sleep(RETRY_S)
    out["direct_first_answer_s"] = time.perf_counter() - started
    out["direct_tries"] = tries


def sleeping(sleep_s: float) -> dict[str, Any]:
    """Seconds and milliseconds that describe one sleeping-Space episode (see module doc)."""
    figures: dict[str, Any] = {"sleep_s": sleep_s}
    with ExitStack() as stack:
        worker = FakeBackend("worker", token=WORKER_TOKEN)
        worker_url = stack.enter_context(LoopbackServer(worker)).url
        routed, alone = SleepingSpace(stack, sleep_s), SleepingSpace(stack, sleep_s)
        function = WebFunction({
            "WORKER_URL": worker_url, "WORKER_TOKEN": WORKER_TOKEN,
            "SPACE_URL": routed.space_url, "SPACE_TOKEN": SPACE_TOKEN, "SPACE_ID": REPO,
            "HF_TOKEN": HF_TOKEN, "HF_ENDPOINT": routed.hub_url, "LOG_LEVEL": "WARNING"})
        stack.callback(function.close)
        function({"http": {"method": "GET", "path": "/health", "headers": {}, "body": ""}},
                  None)  # a warm container, as the pages' /health polls keep it

        with httpx.Client(base_url=worker_url,
                          headers={"authorization": f"Bearer {WORKER_TOKEN}"}) as client:
            own = []
            for _ in range(21):
                started = time.perf_counter()
                client.post("/v1/chat/completions", json={**BODY, "model": "small"})
                own.append((time.perf_counter() - started) * 1000)
        figures["worker_own_ms"] = median(own[1:])

        started = time.perf_counter()
        first = function(_event(), FunctionContext.with_timeout(28_000))
        figures["router_first_answer_ms"] = (time.perf_counter() - started) * 1000
        # The part of it spent letting the wake call leave (issue 11 #6: capped at 250 ms).
        figures["wake_join_ms"] = function.router().last_wake_wait_s * 1000
        headers = {k.lower(): v for k, v in first["headers"].items()}
        assert first["statusCode"] == 200, first
        assert headers.get("x-chat-backend") == "worker", headers
        figures["first_answer_fallback"] = headers.get("x-chat-fallback", "")
        if routed.restarted_at is not None:
            figures["wake_request_after_ms"] = (routed.restarted_at - started) * 1000

        direct: dict[str, float] = {}
        alone_thread = threading.Thread(target=_direct, args=(alone, direct), daemon=True)
        alone_thread.start()

        fallbacks: dict[str, int] = {}
        limit = time.perf_counter() + sleep_s + 120
        while time.perf_counter() < limit:
            time.sleep(RETRY_S)
            answer = function(_event(), FunctionContext.with_timeout(28_000))
            headers = {k.lower(): v for k, v in answer["headers"].items()}
            if headers.get("x-chat-backend") == "space":
                figures["router_space_again_s"] = time.perf_counter() - (routed.restarted_at
                                                                         or started)
                break
            reason = headers.get("x-chat-fallback", "none")
            fallbacks[reason] = fallbacks.get(reason, 0) + 1
        if routed.running_at is not None and routed.restarted_at is not None:
            figures["space_serving_after_wake_s"] = routed.running_at - routed.restarted_at
        figures["fallbacks_while_waking"] = fallbacks
        figures["hub_restarts"] = routed.hub.restarts
        alone_thread.join(sleep_s + 60)
        figures.update(direct)
    return figures


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep-s", type=float, default=5)
    print(json.dumps(sleeping(parser.parse_args().sleep_s), indent=1))
