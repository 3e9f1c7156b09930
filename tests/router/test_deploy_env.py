"""Issue 11, defect 9: `doctl serverless deploy` resolves project.yml from a .env made by the
README's steps (copy .env.example, fill in the required values), and what it deploys is valid.

DigitalOcean's deployer fills `${VAR}` with `process.env[v] || props[v]`, so an empty value
counts as unresolved and fails the deploy. Every optional variable in .env.example therefore has
a value that deploys; `none` means unset (router/_config.py, is_unset).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from router._config import Settings
from tests.support.deployer import ensure_deployer, substitute

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"WORKER_URL": "https://chat-worker.example.app/ai", "WORKER_TOKEN": "wt-0123456789"}


def _example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _project_vars() -> set[str]:
    return set(re.findall(r"\$\{\s*([A-Z_][A-Z0-9_]*)\s*\}", (ROOT / "project.yml").read_text()))


def test_every_optional_variable_has_an_example_value() -> None:
    """GIVEN .env.example and project.yml WHEN compared THEN every variable project.yml names is
    in .env.example, and only the required ones are left empty there."""
    example = _example()
    assert _project_vars() <= set(example)
    assert {name for name, value in example.items() if not value} == set(REQUIRED)


def test_the_deployers_own_substitution_resolves_the_example_env(tmp_path: Path) -> None:
    """GIVEN a .env copied from .env.example with only the required values filled in
    WHEN DigitalOcean's deployer's own substitution code (from npm) reads project.yml with it
    THEN no variable is unresolved, and each function's environment builds valid settings."""
    reason = ensure_deployer()
    if reason is not None:
        pytest.skip(reason)
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={REQUIRED.get(k) or v}\n" for k, v in _example().items()))
    (tmp_path / "project.yml").write_text((ROOT / "project.yml").read_text())

    content, unresolved = substitute(tmp_path / "project.yml", env_file)

    assert unresolved == []
    package = yaml.safe_load(content)["packages"][0]
    for function in package["functions"]:
        env = {**package["environment"], **function.get("environment", {})}
        settings = Settings.from_env(env)
        assert settings.worker_url == REQUIRED["WORKER_URL"]
        assert not settings.has_space and settings.cors_origins == () and not settings.api_keys
        assert settings.warm_schedule == "" and settings.space_sleep_time_s is None


def test_the_old_empty_values_fail_the_deployers_substitution(tmp_path: Path) -> None:
    """GIVEN a .env where the optional values are empty (what .env.example used to say)
    WHEN the deployer's substitution reads project.yml THEN it reports them unresolved: the
    rule this suite checks against is the deployer's, not ours."""
    reason = ensure_deployer()
    if reason is not None:
        pytest.skip(reason)
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={REQUIRED.get(k, '')}\n" for k in _example()))
    (tmp_path / "project.yml").write_text((ROOT / "project.yml").read_text())

    _, unresolved = substitute(tmp_path / "project.yml", env_file)

    assert {"CORS_ORIGINS", "API_KEYS", "MODEL_ALIASES", "WARM_SCHEDULE",
            "SPACE_SLEEP_TIME_S"} <= set(unresolved)
