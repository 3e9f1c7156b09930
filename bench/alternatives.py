"""The alternatives users would pick instead, each installed apart from the project venv.

- LiteLLM (`litellm.Router`), in `.venv-litellm`, run with `LITELLM_LOCAL_MODEL_COST_MAP=True`
  so that importing it does not fetch the model price list.
- Portkey's open-source gateway (`@portkey-ai/gateway` from npm), in the npm prefix
  `.venv-portkey`, run under Node on 127.0.0.1.

Each `ensure_*` installs on first use and returns None, with the reason logged, when it cannot.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from bench.common import (
    LITELLM_VENV,
    LITELLM_VERSION,
    PORTKEY_PREFIX,
    PORTKEY_VERSION,
    ROOT,
    free_port,
)

log = logging.getLogger("bench.alternatives")
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}

# The LiteLLM router users would write: two deployments of one model name. Shared by the cold
# case (import + build) and the warm worker (build, then serve timed completions).
LITELLM_ROUTER = """
import litellm
def build_router(api_base, api_key):
    deployment = {"model_name": "small",
                  "litellm_params": {"model": "openai/small", "api_base": api_base,
                                     "api_key": api_key}}
    return litellm.Router(model_list=[deployment, dict(deployment)])
"""
LITELLM_COLD = """
import time; t0 = time.perf_counter()
import json
def hwm_kib():  # peak RSS of this process alone (ru_maxrss would include the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
""" + LITELLM_ROUTER + """
router = build_router("http://127.0.0.1:9/v1", "unused")
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                  "rss_kib": hwm_kib()}))
"""
# Reads one line per request from stdin, answers with the milliseconds `router.completion` took
# (timed inside this process, so the pipe is not counted).
LITELLM_WARM = LITELLM_ROUTER + """
import sys, time
router = build_router(sys.argv[1], sys.argv[2])
messages = [{"role": "user", "content": "hi"}]
router.completion(model="small", messages=messages, max_tokens=8)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "go":
        break
    started = time.perf_counter()
    answer = router.completion(model="small", messages=messages, max_tokens=8)
    elapsed = (time.perf_counter() - started) * 1000
    assert answer.choices[0].message.content
    print(elapsed, flush=True)
"""


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def ensure_litellm() -> Path | None:
    """The python of a venv holding litellm (made on first use), or None if it cannot be had."""
    python = LITELLM_VENV / "bin" / "python"
    if python.exists() and _run([str(python), "-c", "import litellm"], 120).returncode == 0:
        return python
    log.info("creating %s with litellm==%s", LITELLM_VENV.name, LITELLM_VERSION)
    made = _run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], 300)
    if made.returncode == 0:
        made = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                     f"litellm=={LITELLM_VERSION}"], 900)
    if made.returncode != 0:
        log.warning("litellm not measured: install failed: %s", made.stderr.strip()[-500:])
        return None
    return python


def litellm_cold_run(python: Path, cwd: Path) -> dict[str, float]:
    """One fresh interpreter: import litellm and build a two-deployment Router."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), **LITELLM_ENV}
    out = subprocess.run([str(python), "-I", "-c", LITELLM_COLD], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    data: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


class LiteLLMWorker:
    """A LiteLLM Router in its own process, sending one timed completion per `request()`."""

    def __init__(self, python: Path, api_base: str, api_key: str) -> None:
        env = {**os.environ, **LITELLM_ENV}
        self.proc = subprocess.Popen([str(python), "-I", "-c", LITELLM_WARM, api_base, api_key],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self._out, self._in = self.proc.stdout, self.proc.stdin
        if self._out.readline().strip() != "ready":
            self.close()
            raise RuntimeError("litellm worker did not start")

    def request(self) -> float:
        """Milliseconds one `router.completion` took."""
        self._in.write("go\n")
        self._in.flush()
        return float(self._out.readline())

    def close(self) -> None:
        """Stop the worker."""
        if self.proc.poll() is None:
            try:
                self._in.write("quit\n")
                self._in.flush()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> LiteLLMWorker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def ensure_portkey() -> Path | None:
    """Portkey's gateway server script (installed on first use), or None if it cannot be had."""
    script = (PORTKEY_PREFIX / "node_modules" / "@portkey-ai" / "gateway" / "build"
              / "start-server.js")
    if script.exists():
        return script
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        log.warning("portkey not measured: node and npm are not installed")
        return None
    PORTKEY_PREFIX.mkdir(exist_ok=True)
    made = _run([npm, "install", "--prefix", str(PORTKEY_PREFIX), "--no-audit", "--no-fund",
                 f"@portkey-ai/gateway@{PORTKEY_VERSION}"], 900)
    if made.returncode != 0 or not script.exists():
        log.warning("portkey not measured: npm install failed: %s", made.stderr.strip()[-500:])
        return None
    return script


class PortkeyGateway:
    """Portkey's gateway under Node, listening on 127.0.0.1 only."""

    def __init__(self, script: Path) -> None:
        self.port = free_port()
        preload = (ROOT / "bench" / "portkey_loopback.mjs").as_uri()
        env = {**os.environ, "NODE_ENV": "production"}
        self.proc = subprocess.Popen(["node", "--import", preload, str(script),
                                      f"--port={self.port}", "--headless"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=env, cwd=script.parent)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("portkey gateway exited during startup")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("portkey gateway did not start within 60 s")

    @staticmethod
    def headers(backend_url: str, token: str) -> dict[str, str]:
        """Headers that send a request through Portkey to an OpenAI-style backend."""
        return {"x-portkey-provider": "openai", "x-portkey-custom-host": backend_url + "/v1",
                "authorization": f"Bearer {token}"}

    def close(self) -> None:
        """Stop the gateway."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
