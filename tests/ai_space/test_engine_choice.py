"""ENGINE, N_THREADS and dtype choice: which engine serves what, on how many threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_space import ConfigError, Settings
from ai_space.cpus import default_threads, has_avx512_bf16, quota_cores
from ai_space.engine import choose_engine
from tests.ai_space.llama_support import fake_build


def _settings(**values: object) -> Settings:
    return Settings(allow_no_auth=True, **values)  # type: ignore[arg-type]


def test_auto_picks_llama_cpp_for_a_gguf_on_the_cpu(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN ENGINE=auto and llama-server installed WHEN the model is the packaged GGUF on the
    CPU THEN llama.cpp; WHEN it is a transformers folder, or DEVICE is cuda THEN transformers;
    WHEN llama-server is not installed THEN transformers, and says why."""
    fake_build(tmp_path / "home")
    monkeypatch.setenv("LLAMA_SERVER_HOME", str(tmp_path / "home"))
    assert choose_engine(_settings(device="cpu")) == "llama.cpp"
    assert choose_engine(_settings(model_id=str(tmp_path), device="cpu")) == "transformers"
    assert choose_engine(_settings(device="cuda")) == "transformers"
    assert choose_engine(_settings(model_id=str(tmp_path), model_file="m.gguf",
                                   device="cpu")) == "llama.cpp"
    monkeypatch.setenv("LLAMA_SERVER_HOME", str(tmp_path / "nowhere"))
    assert choose_engine(_settings(device="cpu")) == "transformers"


def test_engine_setting_overrides_auto() -> None:
    """GIVEN ENGINE set explicitly WHEN chosen THEN it wins over the automatic choice."""
    assert choose_engine(Settings.from_env({"ALLOW_NO_AUTH": "1", "DEVICE": "cpu",
                                            "ENGINE": "transformers"})) == "transformers"
    assert choose_engine(Settings.from_env({"ALLOW_NO_AUTH": "1",
                                            "ENGINE": "llama.cpp"})) == "llama.cpp"


def test_engine_threads_and_context_are_read_from_the_environment() -> None:
    """GIVEN ENGINE, N_THREADS and N_CTX WHEN read THEN they land typed; WHEN ENGINE is unknown
    or N_CTX cannot hold the longest prompt THEN ConfigError."""
    settings = Settings.from_env({"ALLOW_NO_AUTH": "1", "ENGINE": "llama.cpp",
                                  "N_THREADS": "3", "N_CTX": "4096",
                                  "MAX_INPUT_TOKENS": "2048"})
    assert (settings.engine, settings.n_threads, settings.n_ctx) == ("llama.cpp", 3, 4096)
    with pytest.raises(ConfigError, match="ENGINE"):
        Settings.from_env({"ALLOW_NO_AUTH": "1", "ENGINE": "vllm"})
    with pytest.raises(ConfigError, match="N_CTX"):
        Settings.from_env({"ALLOW_NO_AUTH": "1", "ENGINE": "llama.cpp", "N_CTX": "1024",
                           "MAX_INPUT_TOKENS": "4096"})


@pytest.mark.parametrize(("files", "cores"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 2),
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),
    ({}, None),
])
def test_cpu_quota_from_cgroup_files(tmp_path: Path, files: dict[str, str],
                                     cores: int | None) -> None:
    """GIVEN cgroup v2 or v1 CPU quota files WHEN read THEN whole cores, rounded up, or None
    when the container is not limited."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert quota_cores(tmp_path) == cores


def test_threads_default_to_the_quota_not_the_host(tmp_path: Path) -> None:
    """GIVEN a quota of one core WHEN threads are chosen THEN 1, whatever the host has."""
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert default_threads(tmp_path) == 1
    assert default_threads(tmp_path / "absent") >= 1


def test_bf16_is_detected_from_cpu_flags(tmp_path: Path) -> None:
    """GIVEN /proc/cpuinfo flags WHEN checked THEN avx512_bf16 (or AMX) means native bf16."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert has_avx512_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not has_avx512_bf16(info)
    assert not has_avx512_bf16(tmp_path / "missing")
