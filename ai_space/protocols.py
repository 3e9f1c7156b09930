"""What the routes need from an engine: the protocols both engines' parts meet.

Kept apart from engine.py (which chooses the engine and so knows where llama-server is), so
the llama.cpp front can name them without importing the chooser.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from ai_space.generation import GenerationJob

EngineName = Literal["transformers", "llama.cpp"]


class ChatFormat(Protocol):
    """Turns chat messages into the model's prompt token ids."""

    def prompt_ids(self, turns: list[dict[str, str]]) -> list[int]:
        """Apply the model's chat template and tokenize; a trailing assistant message is
        continued (see `prefill.continues_final`), otherwise a new assistant turn is opened."""


class Engine(Protocol):
    """Runs generation jobs: admission control, a queue, and a decode loop in a thread."""

    @property
    def alive(self) -> bool:
        """Whether the decode loop is running."""

    def start(self) -> None:
        """Start the decode loop."""

    def stop(self) -> None:
        """End every job as cancelled and stop the loop."""

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, or raise QueueFull."""


class TextEmbedder(Protocol):
    """Sentence embeddings for the /v1/embeddings route."""

    def embed(self, texts: list[str]) -> Any:
        """Unit-length float vectors, one row per text (anything numpy.asarray takes)."""

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens the inputs take after truncation."""
