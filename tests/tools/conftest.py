"""Fixtures for the tools' tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_hub_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub must never find a real token file or cache on this machine."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
