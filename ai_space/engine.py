"""Which engine serves a given configuration (what the routes need from one: protocols.py).

Two engines sit behind the same HTTP contract: transformers (any Hub or folder model, CPU
or CUDA, with its own batcher) and llama.cpp (GGUF models on the CPU, served by llama-server
processes that the front starts and watches: ai_space/llama/engines.py).
The routes see only these protocols, so neither engine's libraries load for the other.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ai_space.config import ConfigError, Settings
from ai_space.cpus import default_threads
from ai_space.models.packaged import resolve
from ai_space.protocols import EngineName
from ai_space.selfcheck import run_probe

log = logging.getLogger("ai_space")

# Present on a machine with an NVIDIA driver loaded (a GPU Space), absent in CPU containers.
_NVIDIA = Path("/proc/driver/nvidia/version")


def cuda_present() -> bool:
    """Whether a CUDA GPU can be used: an NVIDIA driver is loaded and torch is installed."""
    return _NVIDIA.exists() and importlib.util.find_spec("torch") is not None


def runs_on_cpu(device: str) -> bool:
    """Whether DEVICE (auto, cpu, cuda, cuda:0...) ends up on the CPU."""
    return device == "cpu" or (device == "auto" and not cuda_present())


def choose_engine(settings: Settings) -> EngineName:
    """ENGINE=auto: llama.cpp for a GGUF model on the CPU, transformers for everything else.

    An image without llama-server (the GPU Space's) stays on transformers under auto.
    """
    return _static_choice(settings)[0]


class EngineRefused(ConfigError):
    """ENGINE=llama.cpp was asked for, and llama.cpp cannot run on this host."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine that serves, and why (shown by /health and the start-up log)."""

    name: EngineName
    reason: str


def decide_engine(settings: Settings,
                  probe_command: Sequence[str] | None = None) -> EngineChoice:
    """The engine for these settings, after llama.cpp's self-check where llama.cpp would serve.

    The check starts llama-server itself as the child (ai_space/llama/probe.py); a test may
    give a probe command instead (selfcheck.run_probe). A failed self-check makes ENGINE=auto
    choose transformers (one warning line) and makes ENGINE=llama.cpp raise EngineRefused: a
    clear refusal at start, not a crash per request.
    """
    name, why = _static_choice(settings)
    if name != "llama.cpp":
        return EngineChoice(name, why)
    gguf = resolve(settings.model_id, settings.model_file).gguf_path
    if gguf is None:
        # Loading says what is missing; the self-check has nothing to run.
        return EngineChoice(name, why)
    threads = settings.n_threads or default_threads()
    if probe_command is None:
        from ai_space.llama.probe import probe_engine

        probe, _ = probe_engine(gguf, threads=threads, kv_type=settings.kv_type,
                                model_id=settings.model_id, weights=settings.weights)
    else:
        probe = run_probe(gguf, threads=threads, kv_type=settings.kv_type,
                          model_id=settings.model_id, weights=settings.weights,
                          command=probe_command)
    if probe.ok:
        return EngineChoice(name, f"{why}; self-check passed ({probe.detail})")
    if settings.engine == "llama.cpp":
        raise EngineRefused(f"ENGINE=llama.cpp, but llama.cpp failed its start-up self-check: "
                            f"{probe.detail}. Set ENGINE=auto or ENGINE=transformers, or install "
                            f"the portable build (`make venv`)")
    if not (importlib.util.find_spec("transformers") and importlib.util.find_spec("torch")):
        # The worker image has no torch: no engine can serve, and saying so beats a crash loop.
        raise EngineRefused(f"llama.cpp failed its start-up self-check ({probe.detail}) and "
                            f"transformers is not installed, so no engine can serve here")
    log.warning("llama.cpp failed its start-up self-check (%s); ENGINE=auto serves with "
                "transformers", probe.detail)
    return EngineChoice("transformers", f"auto: llama.cpp failed its self-check ({probe.detail})")


def _static_choice(settings: Settings) -> tuple[EngineName, str]:
    if settings.engine != "auto":
        return settings.engine, f"ENGINE={settings.engine}"
    if resolve(settings.model_id, settings.model_file).gguf_file is None:
        return "transformers", "auto: the model is not a GGUF"
    if not runs_on_cpu(settings.device):
        return "transformers", "auto: the model runs on a GPU"
    from ai_space.llama.variants import EngineMissing, engine_binary

    try:
        engine_binary()
    except EngineMissing:
        return "transformers", "auto: llama-server is not installed"
    return "llama.cpp", "auto: a GGUF model on the CPU"
