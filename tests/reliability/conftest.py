"""Shared by the reliability suite: sizes, the figures it records, and the leak watch.

`make test` runs the light sizes; `make reliability` (bench/reliability.py) sets
RELIABILITY_FULL=1 for the full ones and RELIABILITY_RESULTS to a file the figures go to.

Every answer the suite sees (from the router and from ai_space) and every log record of every
logger, unscrubbed, is kept; at the end of the package they are searched for the tokens, keys
and backend URLs the tests used. None may appear.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from router._logs import JsonFormatter
from tests.conftest import SECRETS
from tests.support.loopback import LoopbackServer

FULL = os.environ.get("RELIABILITY_FULL", "") == "1"
RESULTS = os.environ.get("RELIABILITY_RESULTS", "")

# Sizes: full (make reliability) / light (make test).
FUZZ_CASES = 2000 if FULL else 150
AI_FUZZ_CASES = 2000 if FULL else 120
SCHEMA_CASES = 200 if FULL else 25
LOAD_REQUESTS = 200 if FULL else 60


class Ledger(logging.Handler):
    """Collects every answer and log line of the suite, and the secrets they must not hold."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.secrets: set[str] = set(SECRETS)
        self.lines: list[str] = []
        self.answers: list[str] = []
        self._guard = threading.Lock()
        # No secrets given: nothing is scrubbed, so the search sees what the code logged.
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record as its JSON line, with the traceback text if any."""
        line = self.format(record)
        if record.exc_info and record.exc_info[1] is not None:
            line += " " + logging.Formatter().formatException(record.exc_info)
        with self._guard:
            self.lines.append(line)

    def secret(self, *values: str) -> None:
        """Values that must never appear: tokens, keys, URLs (and their host:port)."""
        for value in values:
            if value:
                self.secrets.add(value)
                if "://" in value:
                    self.secrets.add(value.split("://", 1)[1])

    def answer(self, status: int, headers: Any, body: Any) -> None:
        """Keep one answer, whole."""
        text = body if isinstance(body, str) else (
            body.decode("utf-8", "replace") if isinstance(body, bytes) else json.dumps(body))
        with self._guard:
            self.answers.append(json.dumps({"status": status, "headers": dict(headers)}) + text)

    def leaks(self) -> list[str]:
        """Each secret found, with where it was found."""
        found = []
        for secret in sorted(self.secrets):
            for kind, items in (("answer", self.answers), ("log line", self.lines)):
                hit = next((item for item in items if secret in item), None)
                if hit is not None:
                    found.append(f"{secret!r} in a {kind}: {hit[:300]!r}")
        return found


class Results:
    """The figures the README table is made of, written out when RELIABILITY_RESULTS is set."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"full": FULL}
        self._guard = threading.Lock()

    def add(self, section: str, key: str, value: Any) -> None:
        """Record `value` under `section`/`key`."""
        with self._guard:
            self.data.setdefault(section, {})[key] = value

    def bump(self, section: str, key: str, by: int = 1) -> None:
        """Add to a counter."""
        with self._guard:
            bucket = self.data.setdefault(section, {})
            bucket[key] = bucket.get(key, 0) + by


_LEDGER = Ledger()
_RESULTS = Results()
# The root logger sees everything that propagates (router.*, ai_space, httpx, huggingface_hub);
# uvicorn's loggers do not propagate, so they are watched themselves.
_WATCHED = ("", "uvicorn", "uvicorn.access")


@pytest.fixture(scope="package", autouse=True)
def ledger() -> Iterator[Ledger]:
    """Watch every logger for the whole package; THEN no secret in any answer or log line."""
    loggers = [logging.getLogger(name) for name in _WATCHED]
    for logger in loggers:
        logger.addHandler(_LEDGER)
    # The model server logs its 401s and timings at INFO; keep them (the router sets its own).
    ai_space_log = logging.getLogger("ai_space")
    level = ai_space_log.level
    ai_space_log.setLevel(logging.DEBUG)
    try:
        yield _LEDGER
    finally:
        for logger in loggers:
            logger.removeHandler(_LEDGER)
        ai_space_log.setLevel(level)
    leaks = _LEDGER.leaks()
    _RESULTS.add("secrets", "answers_scanned", len(_LEDGER.answers))
    _RESULTS.add("secrets", "log_lines_scanned", len(_LEDGER.lines))
    _RESULTS.add("secrets", "secrets_searched", len(_LEDGER.secrets))
    _RESULTS.add("secrets", "leaks", len(leaks))
    if RESULTS:
        Path(RESULTS).write_text(json.dumps(_RESULTS.data, indent=2, sort_keys=True))
    assert not leaks, "\n".join(leaks)


@pytest.fixture(autouse=True)
def _watch_env_urls(request: pytest.FixtureRequest) -> None:
    """The backend URLs of a test that uses the shared `env` are secrets too."""
    if "env" in request.fixturenames:
        env = request.getfixturevalue("env")
        _LEDGER.secret(env["WORKER_URL"], env["SPACE_URL"], env["HF_ENDPOINT"])


@pytest.fixture(scope="package")
def results() -> Results:
    """The figures recorded by this run."""
    return _RESULTS


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve an ASGI app on loopback for the block; release its hangs at the end."""
    server = LoopbackServer(app).start()
    _LEDGER.secret(server.url)
    try:
        yield server.url
    finally:
        if hasattr(app, "release"):
            app.release()
        server.stop()


# The model servers (torch): built lazily, so the router-only tests never import it.
WORKER_API_TOKEN = "tok-rel-worker-5d1e9b7c3a"
SPACE_API_TOKEN = "tok-rel-space-8c2f4a6e0b"


@contextmanager
def model_server(tmp: Path, token: str, *, embeddings: bool) -> Iterator[str]:
    """A real ai_space server on tiny models (no downloads), ready, on loopback."""
    from pydantic import SecretStr
    from transformers.utils import logging as hf_logging

    from ai_space import Settings, create_app
    from tests.ai_space.tiny_models import build_chat_model, build_embedding_model

    hf_logging.disable_progress_bar()

    chat = tmp / "chat"
    if not chat.exists():
        build_chat_model(chat)
    embed = tmp / "embed"
    if embeddings and not embed.exists():
        build_embedding_model(embed)
    settings = Settings(api_token=SecretStr(token), model_id=str(chat),
                        embedding_model_id=str(embed) if embeddings else None,
                        served_model_name="tiny", max_concurrency=4, max_queue=8,
                        max_tokens=4, max_input_tokens=512, max_body_bytes=64_000)
    app = create_app(settings)
    _LEDGER.secret(token)
    with LoopbackServer(app) as server:
        assert app.state.host.wait_loaded(120), "models did not load"
        _LEDGER.secret(server.url)
        yield server.url


@pytest.fixture(scope="package")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny models are saved, once per run."""
    return tmp_path_factory.mktemp("reliability-models")


@pytest.fixture(scope="package")
def worker_server(tiny_dir: Path) -> Iterator[str]:
    """ai_space as the worker: chat and embeddings, its own token."""
    with model_server(tiny_dir, WORKER_API_TOKEN, embeddings=True) as url:
        yield url


@pytest.fixture(scope="package")
def space_server(tiny_dir: Path) -> Iterator[str]:
    """ai_space as the Space: chat only, another token."""
    with model_server(tiny_dir, SPACE_API_TOKEN, embeddings=False) as url:
        yield url
