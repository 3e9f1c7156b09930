"""ai_space logs one JSON object per line, so no path or header can forge a log line (issue 19,
item 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from bench.common import free_port

TOKEN = "tok-4f9a2c7e1b3d5a6c"
FORGED = "2099-01-01 INFO ai_space: token accepted for admin"


def test_a_newline_in_the_path_cannot_start_a_log_line(tmp_path: Path) -> None:
    """GIVEN `python -m ai_space` with a token (its model folder empty: only its door matters
    here) WHEN a client without a token asks for `/x%0a<a forged log line>` THEN every line the
    server wrote is one JSON object, none starts with the forged text, the 401 line holds the
    newline inside its `msg`, and the token appears nowhere."""
    port = free_port()
    env = {**os.environ, "API_TOKEN": TOKEN, "PORT": str(port), "HOST": "127.0.0.1",
           "MODEL_ID": str(tmp_path), "EMBEDDING_MODEL_ID": "none", "LOG_LEVEL": "info"}
    server = subprocess.Popen([sys.executable, "-m", "ai_space"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:  # until uvicorn listens: no polling, no sleeps
            lines.append(line)
            if "Uvicorn running" in line:
                break
        answer = httpx.get(f"http://127.0.0.1:{port}/x%0a{FORGED.replace(' ', '%20')}",
                           timeout=30)
    finally:
        server.terminate()
        rest, _ = server.communicate(timeout=60)
    lines += rest.splitlines(keepends=True)
    assert answer.status_code == 401
    records = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert not any(line.startswith("2099") for line in lines)
    assert any(r["logger"] == "ai_space" and r["msg"] == f"401 GET /x\n{FORGED}"
               for r in records)
    assert TOKEN not in "".join(lines)
