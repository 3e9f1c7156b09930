"""The CLI: replaying prompts through the policy, and reading .env files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router_service import read_env_file
from router_tools.cli import main


def test_policy_replay_reports_shares(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """GIVEN a JSONL of prompts WHEN replayed THEN the shares and reasons add up."""
    lines = [
        {"prompt": "hi"},
        {"prompt": "Write a proposal for a mobile app"},
        {"messages": [{"role": "user", "content": "thanks!"}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 900},
        {"prompt": "what time is it"},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    no_env = str(tmp_path / "none.env")
    assert main(["policy", str(prompts), "--json", "--env-file", no_env]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 5 and report["errors"] == 1
    assert report["counts"] == {"worker": 3, "space": 2}
    assert report["share"] == {"worker": 0.6, "space": 0.4}
    assert report["reasons"]["task:write"] == 1 and report["reasons"]["max_tokens"] == 1

    assert main(["policy", str(prompts), "--env-file", no_env]) == 0
    assert "| worker | 60.0% | 3 |" in capsys.readouterr().out


def test_env_file_parsing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """GIVEN a .env with comments, quotes and export WHEN read THEN values come out clean; a
    broken line is a one-line error naming the line."""
    env = tmp_path / ".env"
    env.write_text("# c\nexport A=1\nB='two words'\nC=\"x=y\"\n\n")
    assert read_env_file(env) == {"A": "1", "B": "two words", "C": "x=y"}
    env.write_text("A=1\nnot a line\n")
    assert main(["policy", str(env), "--env-file", str(env)]) == 2
    assert capsys.readouterr().err.strip() == "error: .env:2: expected KEY=VALUE"


def test_serve_reports_a_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch):
    """GIVEN a port already in use WHEN `serve` starts THEN a one-line error and exit code 2."""
    import socket

    monkeypatch.setenv("WORKER_URL", "http://127.0.0.1:9")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--port", str(port), "--env-file", str(tmp_path / "none")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "\n" not in err
