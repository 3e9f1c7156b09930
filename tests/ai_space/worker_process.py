"""`python -m ai_space` as the worker image runs it, in a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import httpx

from tests.ai_space.conftest import TOKEN
from tests.support.procs import children_of

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPTS = ["What is 12 times 7?", "Name a famous painter.", "Why is the sky blue?"]


class WorkerProcess:
    """A worker subprocess (ENGINE=llama.cpp), ready once its log says so."""

    def __init__(self, env: dict[str, str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.env = {**os.environ, "API_TOKEN": TOKEN, "PORT": str(self.port),
                    "HOST": "127.0.0.1", "ENGINE": "llama.cpp", "LOG_LEVEL": "info", **env}
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The front's process id."""
        assert self.proc is not None
        return self.proc.pid

    def engine_pids(self) -> list[int]:
        """The llama-server processes the front started."""
        return [p for p in children_of(self.pid)
                if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
                .endswith(b"llama-server")]

    def __enter__(self) -> WorkerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "ai_space"], env=self.env, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        # Ready when both log lines are out: the models loaded, and uvicorn listening.
        seen = {"ready in": False, "Uvicorn running": False}
        for line in self.proc.stderr:
            seen.update({key: True for key in seen if key in line})
            if all(seen.values()):
                break
        assert all(seen.values()), f"the worker stopped before it was ready: {seen}"
        self._drain = threading.Thread(target=self.proc.stderr.read, daemon=True)
        self._drain.start()
        return self

    def exercise(self, concurrent: int, max_tokens: int = 64) -> int:
        """Embed a batch, then answer `concurrent` chats at once; the tokens generated."""
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=120) as client:
            assert client.get("/health").status_code == 200
            client.post("/v1/embeddings", json={"input": PROMPTS * 20}).raise_for_status()

            def chat(i: int) -> int:
                answer = client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": f"Tell me story number {i}."}],
                    "max_tokens": max_tokens, "temperature": 0})
                answer.raise_for_status()
                return int(answer.json()["usage"]["completion_tokens"])

            with ThreadPoolExecutor(concurrent) as pool:
                return sum(pool.map(chat, range(concurrent)))

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)
        if self._drain is not None:
            self._drain.join(30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
