"""Dynamic batching: one thread runs queued generations together through a shared decode loop.

Why a loop of our own instead of `model.generate`: each row needs its own sampling settings,
stop strings, streaming and cancellation, and a finished row should leave the batch at once.
Transformers' continuous-batching API (`generate_batch`) wants a paged-attention setup that is
aimed at CUDA; this loop runs the same on CPU and GPU with any causal LM and a DynamicCache.

How it batches: the thread waits for work, takes up to `max_batch` queued jobs, prefills them
together (left padding, per-row position ids) and then decodes one token per row per step.
Rows that end are dropped from the KV cache. Jobs that arrive meanwhile wait in the queue and
form the next batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from ai_space.errors import QueueFull
from ai_space.generation import Delta, Finished, GenerationJob, TextTracker, pick_next

log = logging.getLogger("ai_space")


class _Stopping(Exception):
    """The server is shutting down while a batch runs."""


@dataclass
class _Row:
    job: GenerationJob
    tracker: TextTracker
    generator: torch.Generator | None
    done: bool = False


class Batcher:
    """Owns the chat model for generation: admission control, a queue, and the decode loop."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int, max_queue: int,
                 eos_ids: set[int], step_gate: threading.Event | None = None,
                 on_finish: Callable[[Finished], None] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.eos_ids = eos_ids
        # Pad positions are masked out, so any id will do; prefer the tokenizer's own.
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(eos_ids, default=0)
        self.step_gate = step_gate
        self.on_finish = on_finish
        self._cond = threading.Condition()
        self._pending: collections.deque[GenerationJob] = collections.deque()
        self._active = 0  # queued + running; what admission control counts
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ai_space-batcher", daemon=True)

    def start(self) -> None:
        """Start the batching thread."""
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued as cancelled and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(30)

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, or raise QueueFull when every slot and queue place is taken."""
        with self._cond:
            if self._stopping or self._active >= self.max_batch + self.max_queue:
                raise QueueFull("server is busy: all generation slots and queue places are taken")
            self._active += 1
            self._pending.append(job)
            self._cond.notify()

    def _take(self) -> list[GenerationJob] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            jobs: list[GenerationJob] = []
            while self._pending and len(jobs) < self.max_batch:
                jobs.append(self._pending.popleft())
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            rows = [_Row(job, TextTracker(self.tokenizer, job.params.stop), job.generator())
                    for job in jobs]
            started = time.perf_counter()
            try:
                self._generate([r for r in rows if not self._cancelled(r)])
            except _Stopping:
                pass
            except Exception as exc:
                log.exception("generation failed for a batch of %d", len(rows))
                for row in rows:
                    self._finish(row, "error", error=type(exc).__name__)
            for row in rows:
                self._finish(row, "cancelled")  # no-op for rows already done
            log.debug("batch of %d done in %.2fs", len(rows), time.perf_counter() - started)
        with self._cond:
            leftovers = list(self._pending)
            self._pending.clear()
        for job in leftovers:
            self._finish(_Row(job, TextTracker(self.tokenizer, ()), None), "cancelled")

    def _cancelled(self, row: _Row) -> bool:
        if row.done:
            return True
        if row.job.cancel.is_set():
            self._finish(row, "cancelled")
            return True
        return False

    def _hold(self, rows: list[_Row]) -> bool:
        """Wait at the step gate, if any; False when every row was cancelled meanwhile."""
        # Test/ops hook: a closed step gate parks the batch before each forward pass.
        # Cancelled rows still end while parked, so a disconnect is seen without a step.
        if self.step_gate is not None:
            while not self.step_gate.wait(0.05):
                if self._stopping:
                    raise _Stopping
                for row in rows:
                    self._cancelled(row)
        return not all(row.done for row in rows)

    @torch.inference_mode()
    def _generate(self, rows: list[_Row]) -> None:
        if not rows:
            return
        device = self.model.device
        for row in rows:
            row.job.batch_size = len(rows)
        width = max(len(r.job.prompt_ids) for r in rows)
        ids = [[self.pad_id] * (width - len(r.job.prompt_ids)) + r.job.prompt_ids for r in rows]
        mask = [[0] * (width - len(r.job.prompt_ids)) + [1] * len(r.job.prompt_ids)
                for r in rows]
        input_ids = torch.tensor(ids, device=device)
        attention = torch.tensor(mask, device=device)
        # Left padding shifts every row; position ids keep each prompt starting at 0.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        while True:
            if not self._hold(rows):
                return
            out = self.model(input_ids=input_ids, attention_mask=attention,
                             position_ids=positions, past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :]
            keep: list[int] = []
            next_ids: list[int] = []
            for i, row in enumerate(rows):
                if self._cancelled(row):
                    continue
                token = self._pick(logits[i], row)
                if self._advance(row, token):
                    keep.append(i)
                    next_ids.append(token)
            if not keep:
                return
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, positions = attention[index], positions[index]
                rows = [rows[i] for i in keep]
            input_ids = torch.tensor(next_ids, device=device).unsqueeze(-1)
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=-1)
            positions = positions[:, -1:] + 1

    def _pick(self, logits: torch.Tensor, row: _Row) -> int:
        if row.job.params.temperature <= 0.0:
            return int(torch.argmax(logits).item())
        # Sample on the CPU: a seeded generator must live where the sampling happens.
        return pick_next(logits.float().cpu(), row.job.params, row.generator)

    def _advance(self, row: _Row, token: int) -> bool:
        """Record one token for a row; False when the row has finished."""
        if token in self.eos_ids:
            self._finish(row, "stop")
            return False
        row.job.completion_tokens += 1
        text = row.tracker.push(token)
        if text:
            row.job.emit(Delta(text))
        if row.tracker.stopped:
            self._finish(row, "stop")
            return False
        if row.job.completion_tokens >= row.job.params.max_tokens:
            self._finish(row, "length")
            return False
        return True

    def _finish(self, row: _Row, reason: str, error: str | None = None) -> None:
        if row.done:
            return
        row.done = True
        if reason in {"stop", "length"}:
            tail = row.tracker.flush()
            if tail:
                row.job.emit(Delta(tail))
        event = Finished(reason, len(row.job.prompt_ids), row.job.completion_tokens, error,
                         row.job.batch_size)
        row.job.emit(event)
        with self._cond:
            self._active -= 1
        if self.on_finish is not None:
            self.on_finish(event)
