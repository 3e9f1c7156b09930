"""A fake Hugging Face Hub: the Space endpoints the router and huggingface_hub call.

It speaks what `HfApi` (huggingface_hub 2.4.0) sends for the Space operations (runtime, restart,
sleeptime, hardware, pause, secrets, variables) and for `create_repo` + `upload_folder`
(`/api/repos/create`, `/api/validate-yaml`, `preupload`, `commit` as ndjson). Files are always
"regular" uploads, so no LFS or Xet transfer is involved. A wake follows the real sequence:
SLEEPING, then `stage_after_restart` (APP_STARTING), then RUNNING after `running_after_polls`
runtime reads, or when the test calls `advance()`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.fakes.asgi import read_request, serve_lifespan

# Stages in which the Hub's edge serves the app (an edge fake follows these).
SERVING = "RUNNING"
STARTING = frozenset({"BUILDING", "APP_STARTING", "RUNNING_BUILDING", "RUNNING_APP_STARTING"})


@dataclass
class FakeHub:
    """An ASGI app holding one Space's state; `restarts` counts restart calls."""

    repo_id: str
    token: str
    url: str = ""
    stage: str = "SLEEPING"
    stage_after_restart: str = "APP_STARTING"
    fail_status: int | None = None
    # How long the Hub takes to answer each call (a slow Hub must not hold the user's answer).
    delay_s: float = 0.0
    restarts: int = 0
    restarted: threading.Event = field(default_factory=threading.Event)
    calls: list[tuple[str, str]] = field(default_factory=list)
    # What the Space is configured with, as the Hub would keep it.
    hardware: str = "t4-small"
    sleep_time: int | None = 3600
    exists: bool = True
    private: bool | None = None
    sdk: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    commits: int = 0
    # The wake sequence: RUNNING after this many runtime reads once starting (None: never).
    running_after_polls: int | None = None
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    bodies: list[tuple[str, Any]] = field(default_factory=list)
    _polls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_stage(self, stage: str) -> None:
        """Move the Space to `stage` and tell the listeners (an edge fake, say)."""
        with self._lock:
            self.stage = stage
            self._polls = 0
        for listener in list(self.listeners):
            listener(stage)

    def advance(self) -> None:
        """Finish a start: a starting Space becomes RUNNING."""
        self.set_stage(SERVING)

    def _runtime(self) -> dict[str, Any]:
        return {"stage": self.stage, "hardware": {"current": self.hardware
                                                  if self.stage == SERVING else None,
                                                  "requested": self.hardware},
                "storage": None, "gcTimeout": self.sleep_time, "devMode": False}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        raw, headers = await read_request(scope, receive)
        method, path = scope["method"], unquote(scope["path"])
        with self._lock:
            self.calls.append((method, path))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, data = self._route(method, path, headers, raw)
        body = json.dumps(data).encode()
        head = [(b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]
        if status == 429:
            head.append((b"retry-after", b"30"))
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    def _route(self, method: str, path: str, headers: dict[str, str],
               raw: bytes) -> tuple[int, Any]:
        if self.fail_status is not None:
            return self.fail_status, {"error": "fake failure"}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/repos/create" and method == "POST":
            return self._create(json.loads(raw or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return 200, {"errors": [], "warnings": []}
        base = f"/api/spaces/{self.repo_id}"
        if not self.exists or not path.startswith(base + "/"):
            return 404, {"error": "Repository not found"}
        action = path[len(base) + 1:]
        if action.startswith(("preupload/", "commit/")) and method == "POST":
            return self._upload(action.split("/")[0], raw)
        body = json.loads(raw) if raw and action != "commit" else None
        with self._lock:
            self.bodies.append((action, body))
        return self._space(method, action, body)

    def _space(self, method: str, action: str, body: Any) -> tuple[int, Any]:
        if action == "runtime" and method == "GET":
            return 200, self._read_runtime()
        if method != "POST":
            return 404, {"error": "Repository not found"}
        if action == "restart":
            with self._lock:
                self.restarts += 1
            self.set_stage(self.stage_after_restart)
            self.restarted.set()
        elif action == "pause":
            self.set_stage("PAUSED")
        elif action == "sleeptime":
            self.sleep_time = int(body["seconds"])
        elif action == "hardware":
            self.hardware = str(body["flavor"])
            self.sleep_time = body.get("sleepTimeSeconds", self.sleep_time)
            self._app_restarts()
        elif action == "secrets":
            self.secrets[body["key"]] = body["value"]
            self._app_restarts()
            return 200, {}
        elif action == "variables":
            self.variables[body["key"]] = body["value"]
            return 200, {k: {"value": v} for k, v in self.variables.items()}
        else:
            return 404, {"error": "Repository not found"}
        return 200, self._runtime()

    def _read_runtime(self) -> dict[str, Any]:
        with self._lock:
            self._polls += 1
            done = (self.running_after_polls is not None and self.stage in STARTING
                    and self._polls > self.running_after_polls)
        if done:
            self.advance()
        return self._runtime()

    def _app_restarts(self) -> None:
        # "Any change to secrets or hardware restarts the app" (DESIGN §2).
        if self.stage == SERVING:
            self.set_stage(self.stage_after_restart)

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        repo_id = f"{body.get('organization')}/{body.get('name')}"
        if repo_id != self.repo_id:
            return 403, {"error": "You don't have the rights to create this repo"}
        if self.exists:
            return 409, {"error": "You already created this space repo", "url": self._url()}
        self.exists = True
        self.sdk = body.get("sdk")
        self.private = body.get("visibility") == "private" or body.get("private") is True
        self.hardware = body.get("hardware", self.hardware)
        self.sleep_time = body.get("sleepTimeSeconds", self.sleep_time)
        self.secrets.update({s["key"]: s["value"] for s in body.get("secrets") or []})
        self.variables.update({v["key"]: v["value"] for v in body.get("variables") or []})
        self.stage = "NO_APP_FILE"
        return 200, {"url": self._url(), "name": repo_id}

    def _url(self) -> str:
        return f"{self.url}/spaces/{self.repo_id}"

    def _upload(self, kind: str, raw: bytes) -> tuple[int, Any]:
        if kind == "preupload":
            files = json.loads(raw)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                    "shouldIgnore": False, "oid": None} for f in files]}
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                self.files[value["path"]] = base64.b64decode(value["content"])
        with self._lock:
            self.commits += 1
        self.set_stage("BUILDING")
        oid = f"{self.commits:040x}"
        return 200, {"commitUrl": f"{self._url()}/commit/{oid}", "commitOid": oid,
                     "success": True}
