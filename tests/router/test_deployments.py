"""Configuring tiers of deployments (issue 26): the one-deployment shorthand unchanged, the
entries' form checked at start-up with an error naming the entry (never a value), and the
README's worked project.yml and App Platform spec resolved as DigitalOcean would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from router._config import Settings
from router._errors import ConfigError
from tests.conftest import HF_TOKEN, SPACE_TOKEN, WORKER_TOKEN
from tests.support.deployer import ensure_deployer, substitute

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
BASE = {"WORKER_URL": "https://worker.example/ai"}
SECRET_URL = "https://secret-host.example"
TOKEN = "tok-9f8e7d6c5b4a"


def test_the_shorthand_is_the_same_two_deployments_as_before():
    """GIVEN only WORKER_URL, SPACE_URL and their tokens (every existing setup) WHEN the
    settings are built THEN the tiers are `worker` (small) and `space` (llm), with the same
    headers the router always sent: the app's token as Authorization, the Hub token as
    X-HF-Authorization for the Space's proxy."""
    settings = Settings.from_env({
        "WORKER_URL": "https://w.example/ai", "WORKER_TOKEN": WORKER_TOKEN,
        "SPACE_URL": "https://acme-chat.hf.space/", "SPACE_TOKEN": SPACE_TOKEN,
        "SPACE_ID": "acme/chat", "HF_TOKEN": HF_TOKEN})
    worker, space = settings.deployments
    assert (worker.name, worker.tier, worker.kind, worker.model) == (
        "worker", "small", "worker", "small")
    assert worker.headers() == {"authorization": f"Bearer {WORKER_TOKEN}"}
    assert (space.name, space.tier, space.kind, space.url, space.hub_id) == (
        "space", "llm", "space", "https://acme-chat.hf.space", "acme/chat")
    assert space.headers() == {"authorization": f"Bearer {SPACE_TOKEN}",
                               "x-hf-authorization": f"Bearer {HF_TOKEN}"}
    assert settings.can_wake and settings.has_space
    no_space = Settings.from_env(BASE)
    assert [d.name for d in no_space.deployments] == ["worker"] and not no_space.has_space


def test_entries_add_deployments_with_their_tokens_read_from_named_variables():
    """GIVEN SPACE_URL and LLM_DEPLOYMENTS naming a second Space and an endpoint, and
    SMALL_DEPLOYMENTS a second worker, each token in a variable of its own WHEN built THEN the
    entries join their tiers after the shorthand, with their keys, and every token and URL is
    among the values the logs scrub."""
    settings = Settings.from_env({
        **BASE, "SPACE_URL": "https://a.hf.space", "HF_TOKEN": HF_TOKEN,
        "SPACE_B_TOKEN": TOKEN, "WORKER_2_TOKEN": "tok-worker-two",
        "SMALL_DEPLOYMENTS": f"worker-2 kind=openai url={SECRET_URL}/v token=WORKER_2_TOKEN",
        "LLM_DEPLOYMENTS": "space-b kind=space url=https://b.hf.space token=SPACE_B_TOKEN "
                           "id=acme/chat-b; ep kind=endpoint url=https://x.endpoints."
                           "huggingface.cloud token=HF_TOKEN id=acme/ep weight=3 "
                           "context=32768 model=tgi instance=nvidia-a10g-x1"})
    names = [(d.name, d.tier, d.kind) for d in settings.deployments]
    assert names == [("worker", "small", "worker"), ("worker-2", "small", "openai"),
                     ("space", "llm", "space"), ("space-b", "llm", "space"),
                     ("ep", "llm", "endpoint")]
    ep = settings.deployments[-1]
    assert (ep.weight, ep.context, ep.model, ep.hub_id, ep.instance) == (
        3, 32768, "tgi", "acme/ep", "nvidia-a10g-x1")
    assert ep.headers() == {"authorization": f"Bearer {HF_TOKEN}"} and ep.can_wake
    assert settings.deployments[3].headers()["authorization"] == f"Bearer {TOKEN}"
    assert settings.deployments[3].model == "llm"  # SPACE_MODEL, the tier's default
    assert {TOKEN, "tok-worker-two", HF_TOKEN, f"{SECRET_URL}/v"} <= set(settings.secrets())
    assert "secret-host.example" in settings.private_hosts()


@pytest.mark.parametrize(("spec", "extra", "says"), [
    (f"ep kind=endpiont url={SECRET_URL}", {}, "deployment 'ep': kind must be one of"),
    ("ep kind=openai url=ftp://secret-host.example", {}, "deployment 'ep': url must start"),
    (f"Bad.Name kind=openai url={SECRET_URL}", {}, "entry 1: a name comes first"),
    (f"ep kind=openai url={SECRET_URL} token={TOKEN}", {},
     "deployment 'ep': token must name an environment variable"),
    (f"ep kind=openai url={SECRET_URL} {TOKEN}=x", {}, "deployment 'ep': an unknown key"),
    (f"ep kind=openai url={SECRET_URL} token=NOT_SET", {},
     "deployment 'ep': token variable NOT_SET is not set"),
    (f"ep kind=openai url={SECRET_URL} token=SPACE_B_TOKEN", {"SPACE_B_TOKEN": "has space"},
     "SPACE_B_TOKEN must be visible ASCII"),
    (f"ep kind=endpoint url={SECRET_URL} id=acme/ep", {},
     "deployment 'ep': waking it needs HF_TOKEN"),
    (f"ep kind=openai url={SECRET_URL} weight=0", {}, "weight must be a whole number"),
    (f"ep kind=openai url={SECRET_URL} context=big", {}, "context must be a whole number"),
    (f"ep kind=openai url={SECRET_URL} id=acme/ep", {"HF_TOKEN": HF_TOKEN},
     "id is for a space or an endpoint"),
    (f"worker kind=openai url={SECRET_URL}", {}, "deployment 'worker' is named twice"),
    (f"ep kind=openai url={SECRET_URL}; ep kind=openai url={SECRET_URL}", {},
     "deployment 'ep' is named twice"),
    (f"ep kind=openai url={SECRET_URL} weight=2 weight=3", {}, "weight is given twice"),
    ("ep kind=openai", {}, "url is required"),
])
def test_a_bad_entry_is_named_and_its_values_are_not(spec: str, extra: dict[str, str],
                                                     says: str):
    """GIVEN LLM_DEPLOYMENTS with one mistake WHEN the settings are built (at start-up)
    THEN ConfigError names LLM_DEPLOYMENTS, the entry and what is wrong, and carries no URL,
    host or token from the value."""
    with pytest.raises(ConfigError) as error:
        Settings.from_env({**BASE, "LLM_DEPLOYMENTS": spec, **extra})
    message = error.value.message
    assert "LLM_DEPLOYMENTS" in message and says in message
    for value in ("secret-host", TOKEN, HF_TOKEN, "has space"):
        assert value not in message


def _dotenv(text: str) -> dict[str, str]:
    """A .env file's values (one per line, optional double quotes), as dotenv reads them."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value.strip().strip('"')
    return values


def test_the_worked_project_deploys_with_the_deployers_own_substitution(tmp_path: Path):
    """GIVEN the README's worked project.yml and .env (two Spaces and one endpoint) WHEN
    DigitalOcean's deployer's own code fills project.yml from the .env THEN nothing is left
    unresolved, the YAML still parses (no value breaks its quoting), and both functions'
    environments build the same three LLM deployments, each with its own token."""
    reason = ensure_deployer()
    if reason is not None:
        pytest.skip(reason)
    (tmp_path / "project.yml").write_text(
        (EXAMPLES / "two-spaces-one-endpoint.project.yml").read_text())
    env_file = tmp_path / ".env"
    env_file.write_text((EXAMPLES / "two-spaces-one-endpoint.env").read_text())
    content, unresolved = substitute(tmp_path / "project.yml", env_file)
    assert unresolved == []
    package = yaml.safe_load(content)["packages"][0]
    for function in package["functions"]:
        settings = Settings.from_env({**package["environment"],
                                      **function.get("environment", {})})
        llm = [(d.name, d.kind, d.weight, d.context) for d in settings.deployments
               if d.tier == "llm"]
        assert llm == [("space-a", "space", 1, 8192), ("space-b", "space", 1, 8192),
                       ("ep", "endpoint", 2, 32768)]
        tokens = [d.token for d in settings.deployments if d.tier == "llm"]
        assert tokens == ["change-me-space-a-api-token", "change-me-space-b-api-token",
                          "hf_change-me"]
        assert all(d.can_wake for d in settings.deployments if d.tier == "llm")
    # The repository's own project.yml and the example differ only by the two token variables.
    ours = set(re.findall(r"\$\{(\w+)\}", (ROOT / "project.yml").read_text()))
    theirs = set(re.findall(r"\$\{(\w+)\}", (tmp_path / "project.yml").read_text()))
    assert theirs - ours == {"SPACE_A_TOKEN", "SPACE_B_TOKEN"} and ours <= theirs
    assert set(_dotenv(env_file.read_text())) == theirs


def test_the_worked_app_spec_builds_the_same_tiers():
    """GIVEN the README's worked App Platform spec WHEN the router service's envs are read as
    App Platform sets them THEN they build the same three LLM deployments, and every token is
    a SECRET env of its own, never inside LLM_DEPLOYMENTS."""
    spec = yaml.safe_load((EXAMPLES / "two-spaces-one-endpoint.app.yaml").read_text())
    router = next(s for s in spec["services"] if s["name"] == "router")
    env = {item["key"]: item["value"] for item in router["envs"]}
    secrets = {item["key"] for item in router["envs"] if item.get("type") == "SECRET"}
    settings = Settings.from_env(env)
    assert [d.name for d in settings.deployments] == ["worker", "space-a", "space-b", "ep"]
    assert {"SPACE_A_TOKEN", "SPACE_B_TOKEN", "HF_TOKEN", "WORKER_TOKEN"} <= secrets
    assert not any(env[name] in env["LLM_DEPLOYMENTS"] for name in secrets)
    for item in router["envs"]:
        assert re.fullmatch(r"[_A-Za-z][_A-Za-z0-9]*", item["key"])
        assert item["scope"] in ("RUN_TIME", "BUILD_TIME", "RUN_AND_BUILD_TIME")
        assert isinstance(item["value"], str)


def test_the_readme_shows_the_worked_files_as_they_are():
    """GIVEN the README's "Growing past one Space" section WHEN its code blocks are read THEN
    each is a verbatim piece of the worked file it shows (docs match)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Growing past one Space", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:yaml|bash|dotenv)\n(.*?)```", section, re.DOTALL)
    files = {path.name: path.read_text() for path in EXAMPLES.iterdir()}
    shown = [block for block in blocks if "LLM_DEPLOYMENTS" in block]
    assert len(shown) >= 3
    for block in shown:
        assert any(block in text for text in files.values()), block[:80]
