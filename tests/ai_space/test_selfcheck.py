"""llama.cpp's start-up self-check: a child that dies makes auto choose transformers, and makes
an explicit ENGINE=llama.cpp refuse to start. The probe children here are real processes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import SecretStr

from ai_space import Hooks, Settings, create_app
from ai_space.engine import EngineRefused, decide_engine
from ai_space.models.packaged import resolve
from ai_space.selfcheck import run_probe
from tests.ai_space.conftest import TOKEN, serve
from tests.ai_space.llama_support import fake_build, require_engine

# A probe child that dies the way an AMX kernel does on a host without the tile state.
SIGILL_CHILD = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
SMOLLM2 = resolve("pkg:smollm2", None).gguf_path

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Derived weights go into a folder of this test's own, not the user's cache."""
    folder = tmp_path_factory.mktemp("gguf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GGUF_CACHE", str(folder))
        yield folder


def _settings(**values: object) -> Settings:
    base = {"api_token": SecretStr(TOKEN), "device": "cpu", "max_tokens": 16,
            "embedding_model_id": None}
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def test_auto_serves_with_transformers_when_the_probe_dies_by_sigill(
        make_client: Callable[..., openai.OpenAI], caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN ENGINE=auto, the packaged GGUF on the CPU, and a probe child that dies by SIGILL
    WHEN the server starts THEN it serves with transformers, says so in one warning line, and
    /health names the engine and why; a chat answer still comes back."""
    caplog.set_level("WARNING", logger="ai_space")
    with serve(_settings(), Hooks(probe_command=SIGILL_CHILD)) as (server, app):
        assert app.state.host.engine == "transformers"
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        answer = make_client(server.url).chat.completions.create(
            model="SmolLM2-135M-Instruct", temperature=0, max_tokens=8,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert health["engine"] == "transformers"
    assert "SIGILL" in health["engine_reason"] and "auto" in health["engine_reason"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and "self-check" in r.getMessage()]
    assert len(warnings) == 1 and "SIGILL" in warnings[0], warnings
    assert answer.choices[0].message.content


def test_explicit_llama_cpp_refuses_to_start_when_the_probe_dies() -> None:
    """GIVEN ENGINE=llama.cpp and a probe child that dies by SIGILL WHEN the app is built THEN it
    refuses with an error that names the engine, the signal and what to do."""
    with pytest.raises(EngineRefused) as refused:
        create_app(_settings(engine="llama.cpp", n_ctx=4096, max_input_tokens=2048),
                   Hooks(probe_command=SIGILL_CHILD))
    message = str(refused.value)
    assert "ENGINE=llama.cpp" in message and "SIGILL" in message
    assert "illegal instruction" in message and "ENGINE=auto" in message


def test_the_real_probe_passes_here_on_the_weights_that_will_serve(gguf_cache: Path) -> None:
    """GIVEN the installed llama.cpp build, the packaged GGUF and WEIGHTS=auto WHEN the real
    probe runs THEN it decodes the derived weights the engine will serve (made into GGUF_CACHE
    by the probe, so the server's load reuses them), and auto chooses llama.cpp with the
    self-check in its reason."""
    require_engine()
    assert SMOLLM2 is not None
    assert run_probe(SMOLLM2, threads=2, kv_type="q8_0").ok
    assert not list(gguf_cache.glob("*.gguf"))  # the file as shipped derives nothing
    choice = decide_engine(_settings())
    assert choice.name == "llama.cpp"
    assert "self-check passed" in choice.reason
    assert [p.name.split("-")[-3] for p in gguf_cache.glob("*.gguf")] == ["q8_0"]


def test_an_engine_that_dies_by_sigill_at_start_fails_the_real_probe(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a llama-server that dies by SIGILL as it starts (as a kernel this CPU lacks makes
    it) WHEN the real probe child starts it THEN the probe dies by SIGILL too, and ENGINE=
    llama.cpp refuses to start, naming the signal."""
    assert SMOLLM2 is not None
    fake_build(tmp_path, "#!/bin/sh\nkill -ILL $$\n")
    monkeypatch.setenv("LLAMA_SERVER_HOME", str(tmp_path))
    probe = run_probe(SMOLLM2, threads=1, kv_type="q8_0")
    assert not probe.ok and "SIGILL (illegal instruction" in probe.detail, probe.detail
    with pytest.raises(EngineRefused, match="SIGILL"):
        # The file's own weights: nothing to derive, so llama-server is the first to run.
        decide_engine(_settings(engine="llama.cpp", n_ctx=4096, max_input_tokens=2048,
                                weights="file"))


@pytest.mark.parametrize(("command", "expected"), [
    ((sys.executable, "-c", "import sys; sys.exit('no model here')"),
     "exited with code 1: no model here"),
    ((sys.executable, "-c", "print('nothing')"), "without reporting a decode"),
    ((sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"),
     "SIGSEGV (segmentation fault)"),
    (("/nonexistent/python",), "could not start"),
])
def test_every_way_a_probe_can_fail_is_named(command: tuple[str, ...], expected: str,
                                              tmp_path: Path) -> None:
    """GIVEN probe children that exit with an error, report nothing, crash, or cannot start
    WHEN run THEN the probe fails and says how."""
    probe = run_probe(tmp_path / "m.gguf", threads=1, kv_type="f16", command=command)
    assert not probe.ok
    assert expected in probe.detail, probe.detail


def test_a_probe_that_hangs_is_ended_at_its_timeout(tmp_path: Path) -> None:
    """GIVEN a probe child that never ends WHEN run with a 1 s limit THEN it fails as a timeout
    instead of holding the server's start."""
    hang = (sys.executable, "-c", "import threading; threading.Event().wait()")
    probe = run_probe(tmp_path / "m.gguf", threads=1, kv_type="f16", command=hang, timeout_s=1)
    assert not probe.ok and "did not finish within 1 s" in probe.detail
