"""Convert a BERT sentence-embedding folder (all-MiniLM-L6-v2) into a GGUF for llama.cpp.

The worker serves embeddings through llama.cpp too, so it never loads torch: torch alone
takes about 215 MiB of resident memory, the whole budget of the chat model beside it. The
conversion follows llama.cpp's own `convert_hf_to_gguf.py` for `BertModel` (tensor names,
WordPiece vocabulary written with a U+2581 "phantom space", mean pooling), using only the
`gguf` and `safetensors` packages. It takes a second and runs once: the file is cached.

`python -m ai_space.llama.bert_gguf pkg:minilm` converts ahead of time (the worker image
does this at build time, so the container starts without writing anything).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from ai_space.models.packaged import packaged_name, resolve

log = logging.getLogger("ai_space")

# Tensors llama.cpp's BERT graph does not use.
_UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_FORMAT = "v2"  # bump when the conversion changes, so cached files are redone
_POOLING_MODES = {"pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
                  "pooling_mode_cls_token": gguf.PoolingType.CLS}


def cache_dir() -> Path:
    """Where converted files go: GGUF_CACHE, else ~/.cache/ai_space."""
    configured = os.environ.get("GGUF_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ai_space"


def cached_gguf(model_id: str, *, in_process: bool = False) -> Path:
    """The GGUF for an embedding model id, converting it first if it is not cached yet.

    The conversion runs in a child process unless `in_process`: it holds the float32 weights
    (90 MB for MiniLM), and the server's peak memory should not remember them.
    """
    source = resolve(model_id, None)
    if source.local_folder is None:
        raise ValueError(f"embedding model {model_id!r} must be a local folder or pkg: id for "
                         "the llama.cpp engine")
    name = packaged_name(model_id) or source.local_folder.name
    weights = source.local_folder / "model.safetensors"
    stamp = int(weights.stat().st_mtime) if weights.exists() else 0
    target = cache_dir() / f"{name}-{stamp}-{_FORMAT}.f16.gguf"
    if not target.is_file():
        if in_process:
            convert(source.local_folder, target)
        else:
            subprocess.run([sys.executable, "-m", "ai_space.llama.bert_gguf", model_id],
                           check=True, timeout=600, stdout=subprocess.DEVNULL)
    if not target.is_file():
        raise FileNotFoundError(f"converting {model_id} did not produce {target.name}")
    return target


def _pooling(folder: Path) -> gguf.PoolingType:
    config = folder / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text())
        for key, kind in _POOLING_MODES.items():
            if modes.get(key):
                return kind
    return gguf.PoolingType.MEAN


def _vocab(folder: Path) -> tuple[list[str], list[int]]:
    """WordPiece tokens in llama.cpp's form: '##x' -> 'x', 'x' -> U+2581 'x', specials as-is."""
    tokens = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special: set[str] = set()
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        added = json.loads(tokenizer_json.read_text()).get("added_tokens", [])
        special = {t["content"] for t in added if t.get("special")}
    else:
        special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    names: list[str] = []
    types: list[int] = []
    for token in tokens:
        if token in special:
            names.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            names.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    return names, types


def _half(name: str, ndim: int) -> bool:
    """Like convert_hf_to_gguf's f16: weight matrices in f16; norms, biases, position and
    token-type embeddings in f32 (llama.cpp adds those to f32 activations directly)."""
    return ndim == 2 and name.endswith(".weight") and not name.endswith("_norm.weight") \
        and not name.startswith(("position_embd.", "token_types."))


def convert(folder: Path, target: Path) -> None:
    """Write `folder`'s BERT model as an f16 GGUF at `target` (atomically)."""
    config = json.loads((folder / "config.json").read_text())
    blocks = int(config["num_hidden_layers"])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(folder.name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(blocks)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(folder))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types = _vocab(folder)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, blocks)
    for hf_name, tensor in load_file(str(folder / "model.safetensors")).items():
        hf_name = hf_name.removeprefix("bert.")
        if hf_name in _UNUSED:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"unexpected tensor in a BERT model: {hf_name}")
        writer.add_tensor(name, tensor.astype(np.float16 if _half(name, tensor.ndim)
                                              else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    log.info("converted %s to %s", folder.name, target)


def main(argv: list[str]) -> int:
    """Convert the embedding models named on the command line; print where each went."""
    logging.basicConfig(level=logging.INFO)
    for model_id in argv or ["pkg:minilm"]:
        sys.stdout.write(f"{cached_gguf(model_id, in_process=True)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
