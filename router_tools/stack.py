"""`python -m router_tools stack` (`make run`): the whole product on 127.0.0.1, one process each.

- worker:  `python -m ai_space`, SmolLM2-135M-Instruct + all-MiniLM-L6-v2 from pip packages.
- space:   `python -m ai_space`, the local Space's model (`STACK_SPACE_MODEL_ID`, by default
  the same packaged SmolLM2; no embeddings), with its own token.
- edge:    `python -m router_tools.local_edge`, Hugging Face's edge and Hub stand-in in front of it.
- gateway: `python -m router_service`, the real `ask` function on DigitalOcean's URL shape.

Tokens are generated at start. Each child runs under `guard` (below), which ends it when this
launcher is gone, so that no part outlives it even after a `kill -9`. Each part has its own
process group: Ctrl-C (SIGINT) or SIGTERM reaches the launcher only, which sends each part
SIGTERM (graceful for uvicorn, silent for a part still importing), waits, and kills what does
not stop in time.
"""
from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from router_tools.stack_plan import (
    HOST,
    ROOT,
    Child,
    Plan,
    StackError,
    plan_stack,
)


def _health_state(child: Child, client: Any) -> str:
    """`ready`, `loading`, `starting` (not answering yet) or `error` (the model failed)."""
    import httpx

    try:
        response = client.get(child.ready_url, headers=child.ready_headers)
    except httpx.HTTPError:
        return "starting"
    if child.name == "edge":
        stage = response.json().get("stage") if response.status_code == 200 else None
        return "ready" if stage == "RUNNING" else "waiting for the space"
    if response.status_code == 200:
        return "ready"
    try:
        status = response.json().get("status")
    except ValueError:
        status = None
    return "error" if status == "error" else "loading"


class Stack:
    """The four child processes: start, wait until ready, stop."""

    def __init__(self, plan: Plan, *, err: IO[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.err = err
        self.clock = clock
        self.stopping = threading.Event()
        self._readers: list[threading.Thread] = []
        self._write_lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self._write_lock:
            self.err.write(text + "\n")
            self.err.flush()

    def _forward(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            # Progress bars redraw with \r: keep the latest state of the line.
            parts = [p for p in raw.decode("utf-8", "replace").rstrip().split("\r") if p.strip()]
            line = parts[-1] if parts else ""
            if line:
                self._say(f"{name:<7} | {line}")
        stream.close()

    def start(self) -> None:
        """Start every part, each in its own process group under the guard."""
        for child in self.plan.children:
            command = [sys.executable, "-m", "router_tools.stack", "guard", str(os.getpid()),
                       *child.args]
            child.process = subprocess.Popen(
                command, cwd=ROOT, env=child.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
            assert child.process.stdout is not None
            reader = threading.Thread(target=self._forward, name=f"out-{child.name}",
                                      args=(child.name, child.process.stdout), daemon=True)
            reader.start()
            self._readers.append(reader)

    def wait_ready(self) -> float:
        """Poll each part's health until all are ready; return seconds taken.

        Raises StackError when a part exits, fails to load, or the deadline passes.
        """
        import httpx

        started = self.clock()
        deadline = started + self.plan.config.ready_timeout_s
        next_report = started + 5.0
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while not self.stopping.is_set():
                now = self.clock()
                for child in self.plan.children:
                    self._check(child, client, now - started)
                if all(c.state == "ready" for c in self.plan.children):
                    return now - started
                if now >= deadline:
                    raise StackError(f"not ready after {now - started:.0f} s: "
                                     f"{self._pending()} (STACK_READY_TIMEOUT_S)")
                if now >= next_report:
                    self._say(f"stack   | {now - started:4.0f} s  still waiting: "
                              f"{self._pending()}")
                    next_report = now + 5.0
                self.stopping.wait(0.5)
        raise StackError("interrupted while starting")

    def _pending(self) -> str:
        return ", ".join(f"{c.name} ({c.state})" for c in self.plan.children
                         if c.state != "ready")

    def _check(self, child: Child, client: Any, elapsed: float) -> None:
        assert child.process is not None
        code = child.process.poll()
        if code is not None:
            raise StackError(f"the {child.name} exited with code {code} while starting "
                             "(its output is above)")
        if child.state == "ready":
            return
        state = _health_state(child, client)
        if state == "error":
            raise StackError(f"the {child.name}'s model failed to load (its output is above)")
        if state == "ready":
            child.ready_after_s = elapsed
            self._say(f"stack   | {child.name} ready after {elapsed:.1f} s")
        child.state = state

    def first_exit(self) -> Child | None:
        """A part that has exited, if any."""
        for child in self.plan.children:
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def watch(self) -> Child | None:
        """Block until asked to stop (None) or until a part exits on its own (that part)."""
        done = threading.Event()

        def wait_for(event_or_process: Any) -> None:
            event_or_process.wait()
            done.set()

        for child in self.plan.children:
            threading.Thread(target=wait_for, args=(child.process,), daemon=True).start()
        threading.Thread(target=wait_for, args=(self.stopping,), daemon=True).start()
        done.wait()
        return None if self.stopping.is_set() else self.first_exit()

    def stop(self, timeout_s: float = 10.0) -> list[str]:
        """SIGTERM every part, wait up to `timeout_s`, then SIGKILL; return the names killed."""
        running = [c for c in self.plan.children
                   if c.process is not None and c.process.poll() is None]
        for child in reversed(running):  # the gateway first, the model servers last
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        end = self.clock() + timeout_s
        killed = []
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.0, end - self.clock()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
                killed.append(child.name)
        for reader in self._readers:
            reader.join(2)
        return killed

    def memory_mib(self) -> float | None:
        """Resident memory of the launcher and its parts, from /proc (None elsewhere)."""
        pids = [os.getpid()] + [c.process.pid for c in self.plan.children if c.process]
        total_kib = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return None
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        return total_kib / 1024


def banner(plan: Plan, ready_s: float, memory_mib: float | None) -> str:
    """What `make run` prints once the stack is up: URLs, a curl line, an openai snippet."""
    info = plan.info
    fn = info["function_url"]
    key_note = ("\n  (API_KEYS is set: add -H 'x-api-key: <one of them>')"
                if info["api_keys"] else "")
    memory = f", {memory_mib / 1024:.1f} GiB resident in 5 processes" if memory_mib else ""
    return f"""
chat-router local stack is up (ready in {ready_s:.1f} s{memory})

  function   {fn}
  chat page  {info['page_url']}
  worker     {info['worker_url']}   SmolLM2-135M-Instruct + all-MiniLM-L6-v2
  space      {info['space_url']}   local Space ({info['space_model']}) behind a Hugging Face \
edge stand-in
  hub api    {info['hub_endpoint']}/api/spaces/{info['space_id']}/runtime

Try it:
  curl -si {fn}/v1/chat/completions \\
    -H 'content-type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Hello!"}}]}}'{key_note}

  from openai import OpenAI
  client = OpenAI(base_url="{fn}/v1", api_key="local")
  reply = client.chat.completions.with_raw_response.create(
      model="auto", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.headers.get("x-chat-backend"), reply.parse().choices[0].message.content)

Metrics (Prometheus text; docs/grafana-dashboard.json graphs them):
  router  {info['metrics_url']}   (the function's credential, when API_KEYS is set)
  worker  {info['worker_metrics_url']}   (-H 'authorization: Bearer <worker API_TOKEN>')
  space   {info['space_metrics_url']}   (-H 'authorization: Bearer <space API_TOKEN>')

Local tokens, generated for this run only (local development; they protect the parts here):
  worker  API_TOKEN={info['worker_token']}
  space   API_TOKEN={info['space_token']}
  hub     HF_TOKEN={info['hub_token']}

`make demo` tours small vs llm routing, the Space's sleep, fallback and wake.
Ctrl-C stops everything.
"""


def write_state(path: Path, info: dict[str, Any]) -> None:
    """Record the running stack for `make demo`, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({**info, "pid": os.getpid()}, handle, indent=2)


def run(env: Mapping[str, str], *, env_file: str, state_file: Path, port: int | None = None,
        out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """`make run`: check and wire the stack, then launch it; the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        plan = plan_stack(env, env_file=env_file, port=port)
    except StackError as exc:
        err.write(f"error: {exc}\n")
        return 2
    return launch(plan, state_file=state_file, out=out, err=err)


def launch(plan: Plan, *, state_file: Path, out: IO[str] | None = None,
           err: IO[str] | None = None) -> int:
    """Start the parts, wait until ready, print the banner, serve until Ctrl-C; exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    stack = Stack(plan, err=err)
    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)
        stack.stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    err.write(f"Starting the local stack on {HOST} (worker, space, edge, gateway); "
              "models load in about 10-30 s on a CPU...\n")
    code = 0
    try:
        stack.start()
        try:
            ready_s = stack.wait_ready()
        except StackError as exc:
            if not signals:
                err.write(f"error: {exc}\n")
                code = 1
        else:
            write_state(state_file, plan.info)
            out.write(banner(plan, ready_s, stack.memory_mib()))
            out.flush()
            gone = stack.watch()
            if gone is not None and gone.process is not None:
                err.write(f"error: the {gone.name} exited with code {gone.process.returncode}; "
                          "stopping the stack\n")
                code = 1
    finally:
        err.write("stopping...\n")
        killed = stack.stop()
        state_file.unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if killed:
        err.write(f"killed {', '.join(killed)} (did not stop within 10 s)\n")
    err.write("stopped: every part has exited\n")
    return code


def _watch_parent(parent: int) -> None:
    # Polls its parent's pid: when the launcher is gone (even killed), this part ends too.
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5.0)
    os._exit(1)


def guard(argv: list[str]) -> int:
    """Run a module as `__main__` in this process, ending it when the launcher `argv[0]` dies."""
    parent, module, rest = int(argv[0]), argv[1], argv[2:]
    if os.getppid() != parent:
        return 1
    threading.Thread(target=_watch_parent, args=(parent,), name="guard", daemon=True).start()
    sys.argv = [module, *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["guard"]:
        sys.exit(guard(sys.argv[2:]))
    sys.exit("usage: python -m router_tools stack")
