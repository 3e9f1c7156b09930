"""The CPU worker's engines: a chat llama-server and an embeddings llama-server, behind the
front. Started in the loader thread (both at once), watched and restarted by EngineProcess,
stopped with the app.

Embeddings get their own process, not a second model in the chat one: llama-server serves
one model per process (the router mode would add a process per model anyway), and its own
process lets embeddings run on one thread beside chat's, the way the old engine kept them.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx

from ai_space.config import Settings
from ai_space.llama.client import EngineClient
from ai_space.llama.embeddings import LlamaEmbeddings, max_seq_length
from ai_space.llama.front import LlamaChat
from ai_space.llama.launch import chat_command, embed_command
from ai_space.llama.process import EngineFailed, EngineProcess
from ai_space.metrics import ServerMetrics

# llama-server's Prometheus gauges that the front's /metrics carries (as ai_space_engine_*).
_GAUGE = re.compile(r"^llamacpp:(\w+) ([0-9.eE+-]+|nan|inf)$", re.MULTILINE)


class LlamaEngines:
    """The running engines and the front's view of them."""

    def __init__(self, settings: Settings, binary: Path, chat_model: Path,
                 embed_model: Path | None, embed_folder: Path | None, threads: int,
                 metrics: ServerMetrics) -> None:
        self.settings = settings
        self.chat_process = EngineProcess("chat", chat_command(binary, chat_model, settings,
                                                               threads))
        self.embed_process = None if embed_model is None else EngineProcess(
            "embeddings", embed_command(binary, embed_model,
                                        settings.embedding_model_name or "embeddings"))
        connections = settings.max_concurrency + settings.max_queue + 8
        self.chat_client = EngineClient(self.chat_process, connections)
        self.metrics = metrics
        self.chat: LlamaChat | None = None
        self.embeddings: LlamaEmbeddings | None = None
        self._embed_max = max_seq_length(embed_folder)

    @property
    def processes(self) -> list[EngineProcess]:
        """Every engine process, chat first."""
        return [p for p in (self.chat_process, self.embed_process) if p is not None]

    @property
    def alive(self) -> bool:
        """Whether every engine is serving."""
        return all(p.alive for p in self.processes)

    def start(self) -> None:
        """Start both engines at once and wait for both; EngineFailed if either fails."""
        errors: list[BaseException] = []

        def start_embed() -> None:
            try:
                assert self.embed_process is not None
                self.embed_process.start()
            except BaseException as exc:  # reported by the caller's thread
                errors.append(exc)

        side = None
        if self.embed_process is not None:
            side = threading.Thread(target=start_embed, name="ai_space-embed-start")
            side.start()
        try:
            self.chat_process.start()
        finally:
            if side is not None:
                side.join()
        if errors:
            raise errors[0]
        n_vocab, tools = self._model_facts()
        self.chat = LlamaChat(self.settings, self.chat_client, self.metrics, n_vocab, tools)
        if self.embed_process is not None:
            self.embeddings = LlamaEmbeddings(EngineClient(self.embed_process, 8),
                                              self._embed_max)
        self.metrics.engine_gauges = self.gauges

    async def aclose(self) -> None:
        """Close the running loop's connections to the engines."""
        await self.chat_client.aclose()
        if self.embeddings is not None:
            await self.embeddings.engine.aclose()

    def stop(self) -> None:
        """Stop every engine process."""
        for process in self.processes:
            process.stop()

    def _model_facts(self) -> tuple[int, bool]:
        """(vocabulary size, whether the chat template renders tools), from the chat engine."""
        transport = httpx.HTTPTransport(uds=str(self.chat_process.socket))
        headers = self.chat_client.headers()
        with httpx.Client(transport=transport, base_url="http://engine", timeout=10) as client:
            models = client.get("/v1/models", headers=headers).json()
            props = client.get("/props", headers=headers).json()
        try:
            n_vocab = int(models["data"][0]["meta"]["n_vocab"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise EngineFailed("the chat engine did not report its vocabulary") from None
        return n_vocab, bool((props.get("chat_template_caps") or {}).get("supports_tools"))

    async def gauges(self) -> dict[str, float]:
        """The chat engine's own gauges now, and the KV cache its running slots hold."""
        if not self.chat_process.alive:
            return {}
        client, headers = self.chat_client.client(), self.chat_client.headers()
        try:
            text = (await client.get("/metrics", headers=headers)).text
            slots = (await client.get("/slots", headers=headers)).json()
        except (httpx.HTTPError, ValueError):
            return {}
        values = {name: float(value) for name, value in _GAUGE.findall(text)}
        held = sum(int(s.get("n_prompt_tokens", 0)) +
                   int((s.get("next_token") or [{}])[0].get("n_decoded", 0))
                   for s in slots if isinstance(s, dict) and s.get("is_processing"))
        values["kv_cache_usage_ratio"] = min(1.0, held / self.settings.n_ctx)
        values["slots_busy"] = float(sum(1 for s in slots
                                         if isinstance(s, dict) and s.get("is_processing")))
        return values
