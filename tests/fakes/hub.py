"""A fake Hugging Face Hub: the Space endpoints the router and huggingface_hub call."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeHub:
    """An ASGI app holding one Space's stage; `restarts` counts restart calls."""

    repo_id: str
    token: str
    url: str = ""
    stage: str = "SLEEPING"
    stage_after_restart: str = "APP_STARTING"
    fail_status: int | None = None
    restarts: int = 0
    restarted: threading.Event = field(default_factory=threading.Event)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _runtime(self) -> dict[str, Any]:
        return {"stage": self.stage, "hardware": {"current": "t4-small",
                                                  "requested": "t4-small"},
                "storage": None, "gcTimeout": 3600}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        with self._lock:
            self.calls.append((method, path))
        status, data = self._route(method, path, headers)
        body = json.dumps(data).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _route(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        if self.fail_status is not None:
            return self.fail_status, {"error": "fake failure"}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        base = f"/api/spaces/{self.repo_id}"
        if path == f"{base}/runtime" and method == "GET":
            return 200, self._runtime()
        if path == f"{base}/restart" and method == "POST":
            with self._lock:
                self.restarts += 1
                self.stage = self.stage_after_restart
            self.restarted.set()
            return 200, self._runtime()
        return 404, {"error": "Repository not found"}
