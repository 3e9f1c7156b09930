"""Settings from the environment: fail closed, parse once, name models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from ai_space import ConfigError, Settings


def test_no_token_refuses_to_start() -> None:
    """GIVEN no API_TOKEN WHEN settings are read THEN ConfigError (fail closed)."""
    with pytest.raises(ConfigError, match="API_TOKEN"):
        Settings.from_env({})


def test_empty_token_counts_as_none() -> None:
    """GIVEN API_TOKEN set to blanks WHEN settings are read THEN ConfigError."""
    with pytest.raises(ConfigError, match="API_TOKEN"):
        Settings.from_env({"API_TOKEN": "  "})


def test_allow_no_auth_opens_the_server() -> None:
    """GIVEN ALLOW_NO_AUTH=1 and no token WHEN settings are read THEN auth is off."""
    settings = Settings.from_env({"ALLOW_NO_AUTH": "1"})
    assert not settings.auth_required


def test_defaults_are_the_packaged_models() -> None:
    """GIVEN only a token WHEN settings are read THEN the packaged SmolLM2 and MiniLM, port
    7860 on all interfaces, and the documented limits are used."""
    settings = Settings.from_env({"API_TOKEN": "t"})
    assert (settings.model_id, settings.embedding_model_id) == ("pkg:smollm2", "pkg:minilm")
    assert (settings.model_name, settings.embedding_model_name) == \
        ("SmolLM2-135M-Instruct", "all-MiniLM-L6-v2")
    assert (settings.host, settings.port) == ("0.0.0.0", 7860)
    assert (settings.max_concurrency, settings.max_queue, settings.max_tokens) == (4, 16, 512)


def test_environment_values_are_parsed() -> None:
    """GIVEN a full environment WHEN read THEN every value lands typed, names are derived."""
    settings = Settings.from_env({
        "API_TOKEN": "t", "MODEL_ID": "Qwen/Qwen2.5-7B-Instruct", "EMBEDDING_MODEL_ID": "none",
        "MAX_CONCURRENCY": "8", "MAX_QUEUE": "0", "MAX_TOKENS": "1024", "PORT": "8080",
        "MAX_BODY_BYTES": "2048", "DEVICE": "cuda", "UNRELATED": "x"})
    assert settings.model_name == "Qwen/Qwen2.5-7B-Instruct"
    assert settings.embedding_model_id is None
    assert (settings.max_concurrency, settings.max_queue, settings.max_tokens) == (8, 0, 1024)
    assert (settings.port, settings.max_body_bytes, settings.device) == (8080, 2048, "cuda")


def test_local_gguf_is_named_after_its_file() -> None:
    """GIVEN a local folder and MODEL_FILE WHEN named THEN the GGUF's stem is the name."""
    settings = Settings.from_env({"API_TOKEN": "t", "MODEL_ID": "/models/x",
                                  "MODEL_FILE": "Llama-3-8B.Q4_K_M.gguf"})
    assert settings.model_name == "Llama-3-8B.Q4_K_M"
    named = Settings.from_env({"API_TOKEN": "t", "SERVED_MODEL_NAME": "llm"})
    assert named.model_name == "llm"


def test_bad_values_are_reported_without_the_token() -> None:
    """GIVEN a bad number and a token WHEN read THEN ConfigError names the variable, not the
    token."""
    with pytest.raises(ConfigError, match="MAX_CONCURRENCY") as raised:
        Settings.from_env({"API_TOKEN": "very-secret", "MAX_CONCURRENCY": "lots"})
    assert "very-secret" not in str(raised.value)


def test_token_is_not_in_the_settings_repr() -> None:
    """GIVEN a token WHEN the settings are printed THEN the token is masked."""
    assert "very-secret" not in repr(Settings(api_token=SecretStr("very-secret")))


def test_module_entry_exits_without_a_token() -> None:
    """GIVEN no API_TOKEN WHEN `python -m ai_space` starts THEN it exits 2 and says why."""
    env = {k: v for k, v in os.environ.items() if k not in {"API_TOKEN", "ALLOW_NO_AUTH"}}
    done = subprocess.run([sys.executable, "-m", "ai_space"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "API_TOKEN" in done.stderr


@pytest.mark.parametrize("level", ["LOUD", "verbose", "5"])
def test_a_bad_log_level_refuses_to_start(level: str) -> None:
    """GIVEN LOG_LEVEL that is no logging level WHEN settings are read THEN ConfigError naming
    the variable (not a crash when the server sets its level at start-up)."""
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        Settings.from_env({"API_TOKEN": "t", "LOG_LEVEL": level})


def test_log_level_takes_any_case() -> None:
    """GIVEN LOG_LEVEL=Warning WHEN settings are read THEN it is accepted as warning."""
    assert Settings.from_env({"API_TOKEN": "t", "LOG_LEVEL": "Warning"}).log_level == "warning"
