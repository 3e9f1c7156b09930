"""The llama-server command lines for the chat and the embeddings engines.

Every flag is set here, none left to a default that could change under us:
- chat: MAX_CONCURRENCY slots (`--parallel`) continuously batched over one unified KV cache
  of N_CTX tokens (`--kv-unified`), each slot capped at the longest request it may serve
  (`--kv-unified-per-slot`, MAX_INPUT_TOKENS + MAX_TOKENS, at most N_CTX); a KV_TYPE cache
  (q8_0 by default; a quantised V cache needs flash attention); `--cache-ram 0`, because its
  default host prompt cache of up to 8 GiB would kill a 512 MiB box; threads from the
  container's CPU quota, because llama-server ignores cgroup quotas; metrics and slots on;
  Jinja templates (tools, and the model's own template); no web UI;
- sampling defaults OpenAI's: temperature 1, top_p 1, and top-k and min-p off (llama.cpp's
  own 0.8 / 0.95 / 40 / 0.05 would change every answer that does not set them);
- embeddings: `--embeddings --pooling mean` on one thread (chat keeps the cores), two slots of
  512 tokens each (MiniLM reads at most 256; the front truncates).
The listening socket and the key file are added by EngineProcess.
"""

from __future__ import annotations

from pathlib import Path

from ai_space.config import Settings

EMBED_SLOTS, EMBED_SLOT_TOKENS = 2, 512


def _common(binary: Path, model: Path, threads: int, alias: str) -> list[str]:
    # Absolute: the engine runs in its own private folder (process.py).
    return [str(binary), "--model", str(model.resolve()), "--alias", alias,
            "--threads", str(threads), "--threads-batch", str(threads),
            "--cache-ram", "0", "--no-cache-idle-slots", "--metrics", "--slots", "--no-webui",
            "--log-prefix", "--no-log-timestamps", "--log-colors", "off"]


def chat_command(binary: Path, model: Path, settings: Settings, threads: int) -> list[str]:
    """llama-server serving chat completions for these settings."""
    per_slot = min(settings.n_ctx, settings.max_input_tokens + settings.max_tokens)
    return [*_common(binary, model, threads, settings.model_name),
            "--parallel", str(settings.max_concurrency),
            "--ctx-size", str(settings.n_ctx), "--kv-unified",
            "--kv-unified-per-slot", str(per_slot),
            "--cache-type-k", settings.kv_type, "--cache-type-v", settings.kv_type,
            "--flash-attn", "on", "--repack" if settings.repack else "--no-repack",
            "--jinja", "--temp", "1", "--top-p", "1", "--top-k", "0", "--min-p", "0"]


def embed_command(binary: Path, model: Path, alias: str) -> list[str]:
    """llama-server serving mean-pooled, normalised sentence embeddings."""
    return [*_common(binary, model, 1, alias), "--embeddings", "--pooling", "mean",
            "--parallel", str(EMBED_SLOTS), "--ctx-size", str(EMBED_SLOTS * EMBED_SLOT_TOKENS),
            "--batch-size", str(EMBED_SLOT_TOKENS), "--ubatch-size", str(EMBED_SLOT_TOKENS)]
