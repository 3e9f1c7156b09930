"""ai_space: an OpenAI-compatible model server for a GPU Hugging Face Space (transformers) and
a CPU App Platform worker (llama.cpp)."""

from ai_space.app import create_app
from ai_space.config import ConfigError, Settings
from ai_space.generation import Finished
from ai_space.host import Hooks

__all__ = ["ConfigError", "Finished", "Hooks", "Settings", "create_app"]
