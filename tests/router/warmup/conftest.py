"""Fixtures for the warm-up suite: a Space whose edge follows the fake Hub's stage."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from router._schedule import DAYS, utc_now
from tests.fakes.hub import FakeHub
from tests.fakes.lifecycle import SpaceLifecycle
from tests.fakes.openai_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[3]
WARMUP_ENTRY = ROOT / "packages" / "chat" / "warmup" / "__main__.py"
EVENTS = Path(__file__).parent / "events"
# A fixed instant: Monday 2025-01-06 10:00 in Berlin (09:00 UTC).
MONDAY_10_BERLIN = datetime.fromisoformat("2025-01-06T09:00:00+00:00")
SATURDAY_10_BERLIN = datetime.fromisoformat("2025-01-11T09:00:00+00:00")
BERLIN_WEEKDAYS = "Mon-Fri 08:00-20:00 Europe/Berlin"


def closed_now() -> str:
    """A schedule that is closed whenever the test runs: one hour, three days from today."""
    return f"{DAYS[(utc_now().weekday() + 3) % 7].title()} 00:00-01:00 UTC"


def open_now() -> str:
    """A schedule (not the empty one) that is open whenever the test runs."""
    return "daily 00:00-24:00 UTC"


def scheduled_event() -> dict[str, Any]:
    """The body the scheduled trigger sends (project.yml's withBody)."""
    event: dict[str, Any] = json.loads((EVENTS / "scheduled.json").read_text())
    return event


@pytest.fixture(autouse=True)
def _no_hub_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub must never find a real token file or cache on this machine."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def lifecycle(hub: FakeHub, space: FakeBackend) -> Iterator[SpaceLifecycle]:
    """A sleeping Space that takes 0.3 s to start once restarted."""
    life = SpaceLifecycle(hub, space, start_s=0.3)
    yield life
    life.stop()


WarmupMain = Callable[[dict[str, Any], Any], dict[str, Any]]


@pytest.fixture
def make_warmup(monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Callable[[dict[str, str]], WarmupMain]]:
    """Load the real `packages/chat/warmup/__main__.py` afresh (a cold container) with `env`."""
    loaded: list[Any] = []

    def make(env: dict[str, str]) -> WarmupMain:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        spec = importlib.util.spec_from_file_location("chat_warmup_entry", WARMUP_ENTRY)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded.append(module)
        main: WarmupMain = module.main
        return main

    yield make
    for module in loaded:
        module.FUNCTION.close()
