"""The models' life: background loading, readiness, and shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ai_space.batching import Batcher
from ai_space.config import Settings
from ai_space.embeddings import Embedder
from ai_space.generation import Finished
from ai_space.models.loading import (
    ChatModel,
    load_chat_model,
    load_embedder,
    pick_device,
    pick_dtype,
)

log = logging.getLogger("ai_space")

Status = Literal["loading", "ready", "error"]
_HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class Hooks:
    """Test and operations hooks; all optional, none needed in production.

    load_gate: loading waits until this event is set (holds the server in "loading").
    step_gate: the batcher waits for it before each forward pass (holds generations running).
    on_finish: called from the batcher thread with each request's final event (metrics).
    """

    load_gate: threading.Event | None = None
    step_gate: threading.Event | None = None
    on_finish: Callable[[Finished], None] | None = None


class ModelHost:
    """Loads the models in a background thread so /health can answer from the first second."""

    def __init__(self, settings: Settings, hooks: Hooks) -> None:
        self.settings = settings
        self.hooks = hooks
        self.status: Status = "loading"
        self.device = pick_device(settings.device)
        self.chat: ChatModel | None = None
        self.embedder: Embedder | None = None
        self.batcher: Batcher | None = None
        self._done = threading.Event()
        self._closing = threading.Event()

    def start(self) -> None:
        """Begin loading in the background and return at once."""
        threading.Thread(target=self._load, name="ai_space-loader", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="ai_space-heartbeat", daemon=True).start()

    def close(self) -> None:
        """Stop the batcher (ending queued generations) and any wait for the load gate."""
        self._closing.set()
        if self.batcher is not None:
            self.batcher.stop()

    def wait_loaded(self, timeout: float) -> bool:
        """Block until loading has ended (ready or error); False on timeout."""
        return self._done.wait(timeout)

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            gate = self.hooks.load_gate
            while gate is not None and not gate.wait(0.1):
                if self._closing.is_set():
                    return
            dtype = pick_dtype(self.settings.dtype, self.device)
            chat = load_chat_model(self.settings.model_id, self.settings.model_file,
                                   self.device, dtype)
            if self.settings.embedding_model_id is not None:
                self.embedder = load_embedder(self.settings.embedding_model_id, self.device)
            batcher = Batcher(chat.model, chat.tokenizer, max_batch=self.settings.max_concurrency,
                              max_queue=self.settings.max_queue, eos_ids=set(chat.eos_ids),
                              step_gate=self.hooks.step_gate, on_finish=self.hooks.on_finish)
            batcher.start()
            self.chat, self.batcher = chat, batcher
            if self._closing.is_set():
                batcher.stop()
                return
            self.status = "ready"
            log.info("ready in %.1fs: model=%s embedding_model=%s device=%s",
                     time.perf_counter() - started, self.settings.model_name,
                     self.settings.embedding_model_name, self.device)
        except Exception:
            self.status = "error"
            log.exception("model loading failed after %.1fs", time.perf_counter() - started)
        finally:
            self._done.set()

    def _heartbeat(self) -> None:
        # Weights can take minutes to download or convert; say that we are still at it.
        started = time.perf_counter()
        while not self._done.wait(_HEARTBEAT_S):
            log.info("still loading after %.0fs", time.perf_counter() - started)
