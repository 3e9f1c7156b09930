"""The models' life: background loading, readiness, and shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ai_space.config import Settings
from ai_space.cpus import default_threads
from ai_space.engine import EngineChoice, EngineRefused, decide_engine, runs_on_cpu
from ai_space.generation import Finished
from ai_space.metrics import ServerMetrics
from ai_space.protocols import ChatFormat, Engine, EngineName, TextEmbedder

if TYPE_CHECKING:
    from ai_space.llama.engines import LlamaEngines

log = logging.getLogger("ai_space")

Status = Literal["loading", "ready", "error"]
_HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class Hooks:
    """Test and operations hooks; all optional, none needed in production.

    load_gate: loading waits until this event is set (holds the server in "loading").
    step_gate: either engine's loop waits for it before each forward pass (holds generations).
    on_finish: called from the engine's thread with each request's final event (metrics).
    probe_command: a command to run as llama.cpp's self-check instead of llama-server itself.
    """

    load_gate: threading.Event | None = None
    step_gate: threading.Event | None = None
    on_finish: Callable[[Finished], None] | None = None
    probe_command: Sequence[str] | None = None


class ModelHost:
    """Loads the models in a background thread so /health can answer from the first second.

    The engine is chosen before that, in the constructor: where llama.cpp would serve, its
    self-check runs first (selfcheck.py), and ENGINE=llama.cpp on a host that fails it raises
    EngineRefused, so the server refuses to start.
    """

    def __init__(self, settings: Settings, hooks: Hooks) -> None:
        self.settings = settings
        self.hooks = hooks
        self._status: Status = "loading"
        try:
            choice = decide_engine(settings, hooks.probe_command)
        except EngineRefused:
            raise
        except (OSError, ValueError):
            # A model that cannot be found: loading fails below and /health says error.
            choice = EngineChoice("transformers", "the model could not be resolved")
        self.engine: EngineName = choice.name
        self.engine_reason = choice.reason
        self.threads = settings.n_threads or default_threads()
        self.device = "cpu" if self.engine == "llama.cpp" or runs_on_cpu(settings.device) \
            else ("cuda" if settings.device == "auto" else settings.device)
        self.chat: ChatFormat | None = None
        self.embedder: TextEmbedder | None = None
        self.batcher: Engine | None = None
        self.engines: LlamaEngines | None = None  # llama.cpp: the engine processes
        # /metrics (ai_space/metrics.py): the engine is wrapped once it has loaded.
        self.metrics = ServerMetrics(self.engine, self.device)
        self._done = threading.Event()
        self._closing = threading.Event()

    @property
    def status(self) -> Status:
        """loading, ready, or error (failed to load, or the decode loop has died)."""
        if self._status == "ready" and self.batcher is not None and not self.batcher.alive:
            return "error"
        if self._status == "ready" and self.engines is not None and not self.engines.alive:
            return "error"  # an engine process died; it is being restarted
        return self._status

    def start(self) -> None:
        """Begin loading in the background and return at once."""
        threading.Thread(target=self._load, name="ai_space-loader", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="ai_space-heartbeat", daemon=True).start()

    def close(self) -> None:
        """Stop the batcher (ending queued generations) and any wait for the load gate."""
        self._closing.set()
        if self.batcher is not None:
            self.batcher.stop()
        if self.engines is not None:
            self.engines.stop()

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
            if self.engine == "llama.cpp":
                self._load_llama()
            else:
                chat, batcher = self._load_transformers()
                batcher.start()
                self.chat, self.batcher = chat, self.metrics.wrap(batcher)
            if self._closing.is_set():
                self.close()
                return
            self._status = "ready"
            log.info("ready in %.1fs: model=%s embedding_model=%s engine=%s (%s) device=%s "
                     "threads=%d", time.perf_counter() - started, self.settings.model_name,
                     self.settings.embedding_model_name, self.engine, self.engine_reason,
                     self.device, self.threads)
        except Exception:
            self._status = "error"
            if self.engines is not None:
                self.engines.stop()
            log.exception("model loading failed after %.1fs", time.perf_counter() - started)
        finally:
            self._done.set()

    def _load_llama(self) -> None:
        from ai_space.llama.bert_gguf import cached_gguf
        from ai_space.llama.engines import LlamaEngines
        from ai_space.llama.variants import engine_binary
        from ai_space.llama.weights import chat_weights, weights_for
        from ai_space.models.packaged import resolve

        settings = self.settings
        path = resolve(settings.model_id, settings.model_file).gguf_path
        if path is None:
            raise ValueError("ENGINE=llama.cpp needs a local GGUF: MODEL_ID a folder or pkg: "
                             "id, and MODEL_FILE the .gguf inside it")
        path = chat_weights(path, weights_for(settings.model_id, settings.weights))
        embed_model = embed_folder = None
        if settings.embedding_model_id is not None:
            embed_model = cached_gguf(settings.embedding_model_id)
            embed_folder = resolve(settings.embedding_model_id, None).local_folder
        engines = LlamaEngines(settings, engine_binary(), path, embed_model, embed_folder,
                               self.threads, self.metrics)
        self.engines = engines
        log.info("starting llama-server for %s: %d slots, %d threads, %d-token %s KV cache",
                 path.name, settings.max_concurrency, self.threads, settings.n_ctx,
                 settings.kv_type)
        engines.start()
        log.info("chat engine: %s", " ".join(engines.chat_process.command()))

    def _load_transformers(self) -> tuple[ChatFormat, Engine]:
        import torch

        from ai_space.batching import Batcher
        from ai_space.models.loading import (
            load_chat_model,
            load_embedder,
            pick_device,
            pick_dtype,
        )

        settings = self.settings
        device = pick_device(settings.device)
        self.device = str(device)
        if device.type == "cpu":
            torch.set_num_threads(self.threads)
        dtype = pick_dtype(settings.dtype, device)
        chat = load_chat_model(settings.model_id, settings.model_file, device, dtype)
        if settings.embedding_model_id is not None:
            self.embedder = load_embedder(settings.embedding_model_id, device)
        batcher = Batcher(chat.model, chat.tokenizer, max_batch=settings.max_concurrency,
                          max_queue=settings.max_queue, eos_ids=set(chat.eos_ids),
                          step_gate=self.hooks.step_gate, on_finish=self.hooks.on_finish)
        return chat, batcher

    def _heartbeat(self) -> None:
        # Weights can take minutes to download or convert; say that we are still at it.
        started = time.perf_counter()
        while not self._done.wait(_HEARTBEAT_S):
            log.info("still loading after %.0fs", time.perf_counter() - started)
