"""Dynamic batching: one thread runs queued generations together through a shared decode loop.

Why a loop of our own instead of `model.generate`: each row needs its own sampling settings,
stop strings, streaming and cancellation, and a finished row should leave the batch at once.
Transformers' continuous-batching API (`generate_batch`) wants a paged-attention setup that is
aimed at CUDA; this loop runs the same on CPU and GPU with any causal LM and a DynamicCache.

How it batches (continuous batching over a DynamicCache): the thread waits for work, takes up
to `max_batch` queued jobs, prefills them together (left padding, per-row position ids) and
decodes one token per row per step. Rows that end leave the KV cache at once. Between steps,
jobs that arrived meanwhile are prefilled as a group and merged into the running batch (the
shorter cache is left-padded and masked), as long as slots are free.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ai_space.errors import NotReady, QueueFull
from ai_space.generation import Delta, Finished, GenerationJob, TextTracker, pick_next
from ai_space.shaping import Pieces, RowShaper, check

log = logging.getLogger("ai_space")


class _Stopping(Exception):
    """The server is shutting down while a batch runs."""


@dataclass
class _Row:
    job: GenerationJob
    tracker: TextTracker
    generator: torch.Generator | None
    done: bool = False
    shaper: RowShaper | None = None  # logit_bias, penalties, logprobs: when asked for


@dataclass
class _Batch:
    """Rows decoding together: their shared KV cache, masks, positions and next tokens."""

    rows: list[_Row]
    cache: DynamicCache
    attention: torch.Tensor  # (rows, cached length): 0 marks padding
    positions: torch.Tensor  # (rows, n): position ids of the last input
    next_ids: list[int] = field(default_factory=list)

    @property
    def can_join(self) -> bool:
        """Whether other rows can be merged in: plain (not sliding-window) cache layers only."""
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def select(self, keep: list[int]) -> None:
        """Keep only the rows at these indices."""
        index = torch.tensor(keep, device=self.attention.device)
        self.cache.batch_select_indices(index)
        self.attention, self.positions = self.attention[index], self.positions[index]
        self.rows = [self.rows[i] for i in keep]

    def merge(self, other: _Batch) -> _Batch:
        """Append another batch's rows, left-padding the shorter cache on the time axis."""
        length = max(self.attention.shape[1], other.attention.shape[1])
        layers: list[tuple[Any, Any]] = list(zip(self.cache.layers, other.cache.layers,
                                                 strict=True))
        for mine, theirs in layers:
            mine.keys = torch.cat([_pad_time(mine.keys, length, -2),
                                   _pad_time(theirs.keys, length, -2)])
            mine.values = torch.cat([_pad_time(mine.values, length, -2),
                                     _pad_time(theirs.values, length, -2)])
        self.attention = torch.cat([_pad_time(self.attention, length, -1),
                                    _pad_time(other.attention, length, -1)])
        self.positions = torch.cat([self.positions[:, -1:], other.positions[:, -1:]])
        self.rows = self.rows + other.rows
        self.next_ids = self.next_ids + other.next_ids
        return self


def _pad_time(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Left-pad `tensor` with zeros along `dim` (the time axis) to `length`."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


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
        self._pieces = Pieces(tokenizer)
        self._cond = threading.Condition()
        self._pending: collections.deque[GenerationJob] = collections.deque()
        self._active = 0  # queued + running; what admission control counts
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="ai_space-batcher", daemon=True)

    def start(self) -> None:
        """Start the batching thread."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the batching thread runs and takes work (False once stopped or crashed)."""
        return self._thread.is_alive() and not self._stopping

    def stop(self) -> None:
        """Finish what is queued as cancelled and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(30)

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, or raise QueueFull when every slot and queue place is taken."""
        if job.params.shaped:
            check(job.params, int(self.model.config.vocab_size))  # a bad token id is a 400
        with self._cond:
            if self._stopping or (self._thread.ident is not None and not self._thread.is_alive()):
                raise NotReady("the generation loop has stopped; see the server log",
                               code="model_error", retry_after=60)
            if self._active >= self.max_batch + self.max_queue:
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

    def _setup(self, jobs: list[GenerationJob]) -> list[_Row]:
        """Rows for these jobs; a job whose setup raises ends with `error`, alone."""
        rows: list[_Row] = []
        for job in jobs:
            try:
                shaper = RowShaper(job, self._pieces, self.eos_ids) \
                    if job.params.shaped else None
                rows.append(_Row(job, TextTracker(self.tokenizer, job.params.stop),
                                 job.generator(), shaper=shaper))
            except Exception as exc:
                log.exception("generation setup failed for one request")
                self._finish(_Row(job, TextTracker(self.tokenizer, ()), None), "error",
                             error=type(exc).__name__)
        return rows

    def _loop(self) -> None:
        try:
            self._run()
        except Exception:
            # A bug outside one batch's try: say so, and let nothing wait on a dead loop
            # (`alive` turns False: /health answers 503, submit refuses).
            log.exception("the generation loop died")
            with self._cond:
                self._stopping = True
                leftovers = list(self._pending)
                self._pending.clear()
            for job in leftovers:
                self._finish(_Row(job, TextTracker(self.tokenizer, ()), None), "error",
                             error="loop_died")

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            rows = self._setup(jobs)
            started = time.perf_counter()
            try:
                self._generate(rows)
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
        """Run rows to the end, letting queued jobs join between steps while slots are free."""
        batch = self._prefill([r for r in rows if not self._cancelled(r)])
        while batch is not None:
            room = self.max_batch - len(batch.rows)
            if room > 0 and batch.can_join:
                joining = self._setup(self._take_now(room))
                rows.extend(joining)  # so a failure below also ends these rows
                new = self._prefill([r for r in joining if not self._cancelled(r)])
                if new is not None:
                    batch = batch.merge(new)
            batch = self._step(batch)

    def _take_now(self, limit: int) -> list[GenerationJob]:
        with self._cond:
            jobs: list[GenerationJob] = []
            while self._pending and len(jobs) < limit:
                jobs.append(self._pending.popleft())
            return jobs

    def _prefill(self, rows: list[_Row]) -> _Batch | None:
        """Run the prompts of `rows` together; return the rows still going, or None."""
        if not rows:
            return None
        device = self.model.device
        for row in rows:
            row.job.batch_size = len(rows)
        width = max(len(r.job.prompt_ids) for r in rows)
        ids = [[self.pad_id] * (width - len(r.job.prompt_ids)) + r.job.prompt_ids for r in rows]
        mask = [[0] * (width - len(r.job.prompt_ids)) + [1] * len(r.job.prompt_ids)
                for r in rows]
        attention = torch.tensor(mask, device=device)
        # Left padding shifts every row; position ids keep each prompt starting at 0.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        batch = _Batch(list(rows), DynamicCache(config=self.model.config), attention, positions)
        return self._forward(batch, torch.tensor(ids, device=device))

    def _step(self, batch: _Batch) -> _Batch | None:
        """Decode one token for every row of the batch."""
        input_ids = torch.tensor(batch.next_ids, device=self.model.device).unsqueeze(-1)
        batch.attention = torch.cat(
            [batch.attention, batch.attention.new_ones((len(batch.rows), 1))], dim=-1)
        batch.positions = batch.positions[:, -1:] + 1
        return self._forward(batch, input_ids)

    def _forward(self, batch: _Batch, input_ids: torch.Tensor) -> _Batch | None:
        if not self._hold(batch.rows):
            return None
        out = self.model(input_ids=input_ids, attention_mask=batch.attention,
                         position_ids=batch.positions, past_key_values=batch.cache,
                         use_cache=True)
        logits = out.logits[:, -1, :]
        keep: list[int] = []
        batch.next_ids = []
        for i, row in enumerate(batch.rows):
            if self._cancelled(row):
                continue
            if row.shaper is not None:
                token = row.shaper.after(self._pick(row.shaper.before(logits[i]), row))
            else:
                token = self._pick(logits[i], row)
            if self._advance(row, token):
                keep.append(i)
                batch.next_ids.append(token)
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.select(keep)
        return batch

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
