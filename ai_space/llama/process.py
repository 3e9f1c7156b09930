"""One llama-server process that the front starts, watches, restarts and stops.

The engine listens on a unix socket in a private folder (mode 0700), never on a network
address, and takes a key made fresh at each start from a file in that folder (0600): the key
is never on its command line, where /proc shows it to every user. Its stdout and stderr become
our JSON log lines, with the key scrubbed.

If the process dies while serving, `alive` turns false at once (so /health says error and new
requests get a 503 the router fails over on; running requests lose their connection and end
with an error), the death is logged with its signal, and the process is started again with
backoff (1 s, doubling to 30 s; reset after a minute of healthy running).
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import httpx

log = logging.getLogger("ai_space.engine")

READY_TIMEOUT_S = 120.0
_POLL_S = 0.05
_BACKOFF_FIRST_S, _BACKOFF_MAX_S, _HEALTHY_AFTER_S = 1.0, 30.0, 60.0
# Passed on to the engine: what it needs to run and find its libraries, nothing else (our
# API_TOKEN, HF_TOKEN and any LLAMA_ARG_* of the caller stay out of its environment).
_ENV_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH")
_ENV_PREFIXES = ("GGML_", "OMP_")
# llama.cpp's --log-prefix marks each line with its level.
_PR_SET_PDEATHSIG = 1
_LEVELS = {"E": logging.ERROR, "W": logging.WARNING, "I": logging.INFO, "D": logging.DEBUG}


class EngineFailed(RuntimeError):
    """The engine process exited, or never became ready, while starting."""


def describe_exit(code: int) -> str:
    """A process's exit status in words: 'died by SIGILL' or 'exited with code 1'."""
    if code < 0:
        try:
            return f"died by {signal.Signals(-code).name}"
        except ValueError:
            return f"died by signal {-code}"
    return f"exited with code {code}"


def _die_with_parent() -> None:
    # In the child, before exec: SIGKILL when the thread that started it ends (Linux).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items()
            if key in _ENV_KEPT or key.startswith(_ENV_PREFIXES)}


class EngineProcess:
    """A supervised llama-server: `start()` blocks until it answers /health with 200."""

    def __init__(self, name: str, argv: Sequence[str], *, restart: bool = True,
                 ready_timeout_s: float = READY_TIMEOUT_S,
                 on_change: Callable[[], None] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.restart = restart
        self.ready_timeout_s = ready_timeout_s
        self.on_change = on_change
        self.folder = Path(tempfile.mkdtemp(prefix=f"ai_space-{name}-"))  # 0700
        self.socket = self.folder / "engine.sock"
        self._key_file = self.folder / "key"
        self.key = ""
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """Whether the engine is up and answering (false from the moment it dies)."""
        proc = self._proc
        return self._ready.is_set() and proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The engine's process id, while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def exit_code(self) -> int | None:
        """How the last process ended (negative: the signal), or None while it runs."""
        proc = self._proc
        return None if proc is None else proc.poll()

    def command(self) -> list[str]:
        """The full command line (the key is in a file, not here)."""
        return [*self.argv, "--host", str(self.socket), "--api-key-file", str(self._key_file)]

    def start(self) -> None:
        """Start the engine and wait until it is ready; EngineFailed if it dies first.

        The process is started, watched and restarted by one thread that lives as long as the
        engine: the child is killed when the thread that started it ends (PR_SET_PDEATHSIG),
        which is also how it dies with the front if the front is killed.
        """
        started = threading.Event()
        failure: list[EngineFailed] = []
        threading.Thread(target=self._run, args=(started, failure),
                         name=f"ai_space-{self.name}-engine", daemon=True).start()
        started.wait()
        if failure:
            raise failure[0]

    def _run(self, started: threading.Event, failure: list[EngineFailed]) -> None:
        try:
            proc = self._spawn()
            self._wait_ready(proc)
        except EngineFailed as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        self._watch(proc)

    def stop(self) -> None:
        """Stop the engine (SIGTERM, then SIGKILL after 5 s) and remove its folder."""
        self._stopping.set()
        self._ready.clear()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.key = secrets.token_urlsafe(32)
        fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.key + "\n")
        self.socket.unlink(missing_ok=True)
        # cwd is the private folder: ggml's loader also looks for CPU libraries in the working
        # directory, and only the one beside the binary (the chosen variant) may load.
        proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=_child_env(), close_fds=True, preexec_fn=_die_with_parent,
                                cwd=self.folder)
        with self._lock:
            self._proc = proc
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout, self.key),
                         name=f"ai_space-{self.name}-log", daemon=True).start()
        return proc

    def _pump(self, stream: IO[bytes], key: str) -> None:
        """Each line the engine writes becomes one JSON log line, the key scrubbed."""
        with stream:
            self._log_lines(stream, key)

    def _log_lines(self, stream: IO[bytes], key: str) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            level = logging.INFO
            if len(line) > 2 and line[1] == " " and line[0] in _LEVELS:
                level, line = _LEVELS[line[0]], line[2:]
            if key:
                line = line.replace(key, "[redacted]")
            log.log(level, "%s", line, extra={"engine": self.name})

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://engine", timeout=2.0) as client:
            while True:
                code = proc.poll()
                if code is not None:
                    raise EngineFailed(f"the {self.name} engine {describe_exit(code)} while "
                                       f"starting")
                if self._stopping.is_set():
                    proc.kill()
                    raise EngineFailed(f"the {self.name} engine was stopped while starting")
                if self.socket.exists():
                    try:
                        if client.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    proc.kill()
                    raise EngineFailed(f"the {self.name} engine was not ready within "
                                       f"{self.ready_timeout_s:.0f} s")
                time.sleep(_POLL_S)
        self._ready.set()
        self._changed()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for the process to end; unless we stopped it, start it again with backoff."""
        backoff = _BACKOFF_FIRST_S
        while True:
            started = time.monotonic()
            code = proc.wait()
            self._ready.clear()
            if self._stopping.is_set():
                return
            self._changed()
            log.error("the %s engine %s while serving (pid %d)%s", self.name,
                      describe_exit(code), proc.pid,
                      "; restarting it" if self.restart else "", extra={"engine": self.name})
            if not self.restart:
                return
            if time.monotonic() - started > _HEALTHY_AFTER_S:
                backoff = _BACKOFF_FIRST_S
            while True:
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                try:
                    proc = self._spawn()
                    self._wait_ready(proc)
                except EngineFailed as exc:
                    if self._stopping.is_set():
                        return
                    log.error("restarting the %s engine failed: %s; next try in %.0f s",
                              self.name, exc, backoff, extra={"engine": self.name})
                    continue
                self.restarts += 1
                log.info("the %s engine is ready again (restart %d)", self.name, self.restarts,
                         extra={"engine": self.name})
                break

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
