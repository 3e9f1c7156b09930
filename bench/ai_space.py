"""ai_space throughput, as bench/ai_space_bench.py measures it, run as its own process."""

from __future__ import annotations

import re
import subprocess
import sys

from bench.common import ROOT

MODELS = {"smollm2": "SmolLM2-135M", "tiny": "tiny llama (test model)"}


def throughput(model: str, max_tokens: int = 32) -> dict[str, object]:
    """Rows of (mode, concurrency, tok/s, req/s, p50 s) and each mode's peak RSS in MiB."""
    out = subprocess.run([sys.executable, "-m", "bench.ai_space_bench", "--model", model,
                          "--max-tokens", str(max_tokens)], cwd=ROOT, capture_output=True,
                         text=True, timeout=3600, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    rows = []
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].isdigit():
            rows.append((cells[0], int(cells[1]), float(cells[3]), float(cells[4]),
                         float(cells[5])))
    rss = {m[1]: float(m[2]) for m in re.finditer(r"(\w+) server peak RSS: ([\d.]+) MiB",
                                                  out.stderr)}
    return {"model": MODELS[model], "max_tokens": max_tokens, "rows": rows, "rss": rss}
