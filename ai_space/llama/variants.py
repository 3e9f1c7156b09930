"""Where the llama.cpp binaries live (a stub: the build side replaces this module).

The build installs `llama-server` and `llama-quantize` under one folder: LLAMA_SERVER_HOME
when set, else `llama/` inside the virtual environment (`make venv`), else /opt/llama (the
worker image).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ai_space.config import ConfigError


class EngineMissing(ConfigError):
    """The llama.cpp binaries are not installed where the server looks for them."""


def engine_home() -> Path:
    """The folder holding bin/llama-server: LLAMA_SERVER_HOME, the venv's llama/, /opt/llama."""
    override = os.environ.get("LLAMA_SERVER_HOME")
    if override:
        return Path(override)
    beside = Path(sys.prefix) / "llama"
    return beside if beside.exists() else Path("/opt/llama")


def engine_binary(name: str = "llama-server", flags: frozenset[str] | None = None) -> Path:
    """The path of one llama.cpp program; EngineMissing when it is not installed."""
    path = engine_home() / "bin" / name
    if not path.is_file():
        raise EngineMissing(f"{name} is not installed at {path}; run `make venv` (or set "
                            f"LLAMA_SERVER_HOME to the folder that holds bin/{name})")
    return path
