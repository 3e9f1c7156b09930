"""`python -m router_tools space ...` with huggingface_hub's real client against the fake Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router_tools.cli import main as cli
from tests.conftest import HF_TOKEN, SPACE_ID, SPACE_TOKEN
from tests.fakes.hub import FakeHub
from tests.fakes.lifecycle import SpaceLifecycle
from tests.fakes.openai_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]):
    """Run the CLI with the fakes' environment (no .env file); return (code, out, err)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli(["space", "--env-file", str(tmp_path / "absent.env"), *argv])
        out, err = capsys.readouterr()
        for secret in (HF_TOKEN, SPACE_TOKEN):
            assert secret not in out + err
        return code, out, err

    return invoke


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small Docker Space folder: front matter, Dockerfile, code, and a cache to skip."""
    root = tmp_path / "ai_space"
    (root / "__pycache__").mkdir(parents=True)
    (root / "README.md").write_text("---\ntitle: chat\nsdk: docker\napp_port: 7860\n---\n")
    (root / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (root / "app.py").write_text("print('hi')\n")
    (root / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_status(run, hub: FakeHub):
    """GIVEN a sleeping t4-small Space WHEN `space status --json` THEN stage, hardware and
    sleep time come from the Hub."""
    code, out, _ = run("status", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["space"], data["stage"], data["requested_hardware"], data["sleep_time_s"]) == \
        (SPACE_ID, "SLEEPING", "t4-small", 3600)
    assert data["schedule"] == "always" and data["window_open"] is True


def test_wake_restarts_then_waits_with_progress(run, hub: FakeHub, space: FakeBackend):
    """GIVEN a sleeping Space that runs after 2 more polls WHEN `space wake`
    THEN it restarts once, reports each stage on stderr, and waits for /health."""
    hub.running_after_polls = 2
    life = SpaceLifecycle(hub, space, start_s=60.0)  # the polls finish the start, not the timer
    try:
        code, out, err = run("wake", "--interval", "0", "--timeout", "10")
    finally:
        life.stop()
    assert code == 0
    assert hub.restarts == 1
    assert "restart requested, now APP_STARTING" in err
    assert err.index("stage APP_STARTING") < err.index("stage RUNNING") < err.index("HTTP 200")
    assert out.strip() == f"{SPACE_ID}: RUNNING"


def test_wake_gives_up_on_a_broken_space(run, hub: FakeHub):
    """GIVEN a Space whose build failed WHEN `space wake` THEN no restart, exit code 1."""
    hub.stage = "BUILD_ERROR"
    code, _, err = run("wake", "--interval", "0", "--timeout", "1")
    assert (code, hub.restarts) == (1, 0)
    assert "BUILD_ERROR" in err


def test_wake_times_out(run, hub: FakeHub):
    """GIVEN a Space that never finishes starting WHEN `space wake --timeout 0`
    THEN it stops waiting and says where the Space is."""
    code, _, err = run("wake", "--interval", "0", "--timeout", "0", "--no-health")
    assert code == 1
    assert "still APP_STARTING" in err


def test_sleep_and_pause(run, hub: FakeHub):
    """GIVEN a running Space WHEN `space sleep --seconds 900`, then `space pause`
    THEN the sleeptime endpoint gets {"seconds": 900}, then the Space is PAUSED."""
    hub.stage = "RUNNING"
    assert run("sleep", "--seconds", "900")[0] == 0
    assert ("sleeptime", {"seconds": 900}) in hub.bodies and hub.sleep_time == 900
    code, out, _ = run("pause")
    assert code == 0 and "PAUSED" in out and hub.stage == "PAUSED"
    code, _, err = run("sleep")
    assert code == 2 and "SPACE_SLEEP_TIME_S" in err


@pytest.mark.parametrize(("status", "word"), [(401, "401"), (404, "404"), (429, "429")])
def test_hub_errors_exit_1_without_a_traceback(run, hub: FakeHub, status: int, word: str):
    """GIVEN a Hub answering 401/404/429 WHEN `space status` THEN exit 1 with a short error."""
    hub.fail_status = status
    code, _, err = run("status")
    assert code == 1 and err.startswith("error: hub answered HTTP " + word)


def test_deploy_creates_the_docker_space(run, hub: FakeHub, folder: Path,
                                         monkeypatch: pytest.MonkeyPatch):
    """GIVEN no Space yet WHEN `space deploy` THEN create_repo makes a private Docker Space
    with its hardware, sleep time, API_TOKEN secret and variables, and the folder is uploaded
    (without caches) in one commit. No secret value is printed."""
    hub.exists = False
    monkeypatch.setenv("EXTRA_SECRET", "xs-secret-value-1")
    code, out, _ = run("deploy", "--folder", str(folder), "--hardware", "l4x1",
                       "--sleep-time", "1800", "--secret", "EXTRA_SECRET",
                       "--var", "MODEL_ID=acme/llm-8b")
    assert code == 0, out
    assert (hub.sdk, hub.private, hub.hardware, hub.sleep_time) == ("docker", True, "l4x1", 1800)
    assert hub.secrets == {"API_TOKEN": SPACE_TOKEN, "EXTRA_SECRET": "xs-secret-value-1"}
    assert hub.variables == {"EMBEDDING_MODEL_ID": "none", "MODEL_ID": "acme/llm-8b"}
    assert sorted(hub.files) == ["Dockerfile", "README.md", "app.py"]
    assert hub.commits == 1
    assert "xs-secret-value-1" not in out
    assert "secret API_TOKEN set" in out and "uploaded ai_space/" in out


def test_deploy_updates_an_existing_space(run, hub: FakeHub, folder: Path):
    """GIVEN an existing running Space on t4-small WHEN `space deploy --hardware a10g-small`
    THEN secrets and variables are set, the hardware and sleep time changed, then the upload."""
    hub.stage = "RUNNING"
    code, out, _ = run("deploy", "--folder", str(folder), "--hardware", "a10g-small",
                       "--sleep-time", "600")
    assert code == 0, out
    assert hub.secrets == {"API_TOKEN": SPACE_TOKEN}
    assert (hub.hardware, hub.sleep_time, hub.commits) == ("a10g-small", 600, 1)
    assert [line.split(": ", 1)[1] for line in out.splitlines()][:4] == [
        "secret API_TOKEN set", "variable EMBEDDING_MODEL_ID set",
        "hardware a10g-small requested", "sleep time 600 s set"]


def test_deploy_refuses_without_what_it_needs(run, folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    """GIVEN a folder without a Dockerfile, or no SPACE_TOKEN WHEN `space deploy`
    THEN it stops before calling the Hub, with exit code 2."""
    assert run("deploy", "--folder", str(tmp_path))[0] == 2
    monkeypatch.setenv("SPACE_TOKEN", "")
    code, _, err = run("deploy", "--folder", str(folder))
    assert code == 2 and "SPACE_TOKEN" in err


def test_cost_of_a_weekday_schedule(run):
    """GIVEN Mon-Fri 08:00-20:00 on a t4-small with a 1 h sleep time WHEN `space cost`
    THEN GPU hours are window + sleep tail, and the functions stay inside the free tier."""
    code, out, _ = run("cost", "--schedule", "Mon-Fri 08:00-20:00 Europe/Berlin",
                       "--hardware", "t4-small", "--sleep-time", "3600",
                       "--project", str(ROOT / "project.yml"), "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["window_hours_per_week"], data["tail_hours_per_week"]) == (60.0, 5.0)
    assert data["gpu_usd_per_month"] == pytest.approx(65 * 365.25 / 12 / 7 * 0.40, abs=0.01)
    assert data["functions"][0]["name"] == "warmup"
    assert data["functions"][0]["calls_per_month"] == pytest.approx(2016 * 365.25 / 12 / 7)
    assert data["functions_usd_per_month"] == 0.0
    code, text, _ = run("cost", "--schedule", "", "--project", str(ROOT / "project.yml"))
    assert code == 0 and "schedule: always" in text and "GPU: $292.20/month" in text


def test_cost_prices_each_llm_deployment(run, monkeypatch: pytest.MonkeyPatch):
    """GIVEN the README's worked LLM tier (SPACE_URL none; two Spaces and an endpoint in
    LLM_DEPLOYMENTS) WHEN `space cost --json` THEN no shorthand Space is priced, each deployment
    is, by its own instance (the Spaces by SPACE_HARDWARE), and the total adds them up."""
    monkeypatch.setenv("SPACE_URL", "none")
    monkeypatch.setenv("SPACE_A_TOKEN", "tok-a-0123")
    monkeypatch.setenv("SPACE_B_TOKEN", "tok-b-0123")
    monkeypatch.setenv("LLM_DEPLOYMENTS", (
        "space-a kind=space url=https://a.hf.space token=SPACE_A_TOKEN id=acme/a; "
        "space-b kind=space url=https://b.hf.space token=SPACE_B_TOKEN id=acme/b; "
        "ep kind=endpoint url=https://x.endpoints.huggingface.cloud token=HF_TOKEN "
        "id=acme/ep instance=nvidia-l4-x1"))
    code, out, _ = run("cost", "--schedule", "Mon-Fri 08:00-20:00 Europe/Berlin",
                       "--hardware", "t4-small", "--sleep-time", "900",
                       "--scale-to-zero-minutes", "15", "--project", str(ROOT / "project.yml"),
                       "--json")
    data = json.loads(out)
    assert code == 0 and data["hardware"] == "none" and data["gpu_usd_per_month"] == 0.0
    priced = {d["name"]: (d["instance"], d["price_per_hour"]) for d in data["deployments"]}
    assert priced == {"space-a": ("t4-small", 0.4), "space-b": ("t4-small", 0.4),
                      "ep": ("nvidia-l4-x1", 0.8)}
    assert data["total_usd_per_month"] == pytest.approx(
        sum(d["usd_per_month"] for d in data["deployments"]), abs=0.02)
