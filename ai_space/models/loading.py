"""Model loading: resolve ids (Hub, local folder, packaged), pick device and dtype, load."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ai_space.cpus import has_avx512_bf16
from ai_space.embeddings import Embedder, max_seq_length
from ai_space.models.packaged import Source, resolve
from ai_space.prefill import continues_final

log = logging.getLogger("ai_space")

# Used only when a tokenizer ships without a chat template (rare for chat models).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ChatModel:
    """A loaded causal LM with its tokenizer and the token ids that end a turn."""

    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]

    def prompt_ids(self, turns: list[dict[str, str]]) -> list[int]:
        """Format turns with the tokenizer's chat template and tokenize them; a trailing
        assistant message is continued, as vLLM and TGI do."""
        prefill = continues_final(turns)
        text = self.tokenizer.apply_chat_template(turns, tokenize=False,
                                                  add_generation_prompt=not prefill,
                                                  continue_final_message=prefill)
        # The template already places BOS and role markers; don't add them twice.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def pick_device(setting: str) -> torch.device:
    """DEVICE=auto means cuda when present, else cpu; anything else is taken as given."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """DTYPE=auto: bf16 on GPUs with it, else fp16; bf16 on CPUs with avx512_bf16, else fp32."""
    if setting != "auto":
        if setting not in _DTYPES:
            raise ValueError(f"DTYPE must be auto or one of {sorted(_DTYPES)}")
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On the CPU, bfloat16 pays only with native bf16 dot products (avx512_bf16 / AMX):
    # there it is about 1.6x float32 with 96.8% top-1 agreement. Elsewhere float32.
    return torch.bfloat16 if device.type == "cpu" and has_avx512_bf16() else torch.float32


def _describe(source: Source) -> str:
    if source.local_folder is None:
        return f"{source.location} from the Hub (cached under HF_HOME)"
    return f"{source.gguf_file or source.location} from a local folder"


def load_chat_model(model_id: str, model_file: str | None, device: torch.device,
                    dtype: torch.dtype) -> ChatModel:
    """Load the chat model and tokenizer; GGUF files are dequantised to `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(model_id, model_file)
    extra: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    log.info("loading tokenizer: %s", _describe(source))
    tokenizer = AutoTokenizer.from_pretrained(source.location, **extra)
    log.info("loading weights: %s -> %s %s%s", _describe(source), device, dtype,
             " (converting GGUF)" if source.gguf_file else "")
    model: Any = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, **extra)
    model = model.to(device)
    model.eval()
    if tokenizer.chat_template is None:
        log.warning("tokenizer has no chat template; using a plain 'role: content' format")
        tokenizer.chat_template = FALLBACK_TEMPLATE
    return ChatModel(model, tokenizer, frozenset(eos_ids(model, tokenizer)))


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a turn: the generation config's eos ids and the tokenizer's."""
    found: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        found.add(configured)
    elif isinstance(configured, list):
        found.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        found.add(int(tokenizer.eos_token_id))
    return found


def load_embedder(model_id: str, device: torch.device) -> Embedder:
    """Load an encoder for sentence embeddings (float32: embeddings are small and cheap)."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve(model_id, None)
    log.info("loading embedding model: %s", _describe(source))
    tokenizer = AutoTokenizer.from_pretrained(source.location)
    model: Any = AutoModel.from_pretrained(source.location, dtype=torch.float32)
    model.to(device).eval()
    return Embedder(model, tokenizer, max_seq_length(source.local_folder, tokenizer))
