"""The chat weights' format (WEIGHTS, REPACK): derived once into GGUF_CACHE from the packaged
SmolLM2 file, then reused, by the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest
from pydantic import SecretStr

from ai_space import ConfigError, Settings
from ai_space.llama.weights import MEASURED, weights_for
from tests.ai_space.conftest import TOKEN, serve

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_weights_and_repack_are_read_from_the_environment() -> None:
    """GIVEN WEIGHTS and REPACK WHEN read THEN they land typed; WHEN WEIGHTS is unknown THEN
    ConfigError naming WEIGHTS; WHEN unset THEN auto: the measured format for the packaged
    model, the file as shipped for any other."""
    settings = Settings.from_env({"ALLOW_NO_AUTH": "1", "WEIGHTS": "q8_0", "REPACK": "0"})
    assert (settings.weights, settings.repack) == ("q8_0", False)
    with pytest.raises(ConfigError, match="WEIGHTS"):
        Settings.from_env({"ALLOW_NO_AUTH": "1", "WEIGHTS": "q2_k"})
    default = Settings.from_env({"ALLOW_NO_AUTH": "1"})
    assert (default.weights, default.repack) == ("auto", True)
    assert weights_for("pkg:smollm2", "auto") == MEASURED["pkg:smollm2"]
    assert weights_for("/models/other", "auto") == "file"
    assert weights_for("pkg:smollm2", "file") == "file"


def _greedy(url: str) -> str:
    answer = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=60, json={
        "messages": [{"role": "user", "content": "Name a famous painter."}],
        "max_tokens": 12, "temperature": 0})
    answer.raise_for_status()
    return str(answer.json()["choices"][0]["message"]["content"])


@pytest.mark.slow
def test_derived_weights_are_made_once_and_reused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN an empty GGUF_CACHE and WEIGHTS=q8_0 WHEN the llama.cpp server starts on the
    packaged Q4_1 SmolLM2 THEN it makes one Q8_0 GGUF there and serves from it; WHEN a second
    server starts THEN it loads that same file, unwritten (same inode, same mtime), and
    answers the same."""
    monkeypatch.setenv("GGUF_CACHE", str(tmp_path))
    settings = Settings(api_token=SecretStr(TOKEN), engine="llama.cpp", weights="q8_0",
                        embedding_model_id=None, max_concurrency=2, n_ctx=2048,
                        max_input_tokens=1024)
    with serve(settings) as (server, app):
        made = sorted(tmp_path.iterdir())
        assert [p.suffix for p in made] == [".gguf"], made
        assert _served(app) == made[0]
        first = made[0].stat()
        first_answer = _greedy(server.url)
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(made[0])).tensors
             if t.name.startswith("blk.") and t.name.endswith("_up.weight")}
    assert types == {"Q8_0"}
    with serve(settings) as (server, app):
        assert sorted(tmp_path.iterdir()) == made
        assert _served(app) == made[0]
        second = made[0].stat()
        assert _greedy(server.url) == first_answer
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def _served(app: Any) -> Path:
    """The weights file the chat engine was started on (its --model)."""
    command = app.state.host.engines.chat_process.command()
    return Path(command[command.index("--model") + 1])
