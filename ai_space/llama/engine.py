"""Continuous batching on llama.cpp: one thread decodes every running request in one batch.

Each request gets a sequence id (a slot) in one llama.cpp context whose KV cache is shared
(unified) by all slots. Every step builds one `llama_batch`: the next token of each request
that is generating, then as many prompt tokens of newly admitted requests as fit in
`n_batch`. Requests join between steps as soon as a slot and enough KV cache are free, and a
request that ends frees both at once (`llama_memory_seq_rm`). Sampling, stop strings,
streaming and cancellation are per request, in Python; the next tokens of every request in
a step are sampled together, in one numpy pass over the step's logits (sampling.pick_batch).

A failure is contained: an error while handling one request ends that request; a failed
`llama_decode` ends the requests in that batch. The loop itself keeps running; should it ever
die, `alive` turns false and /health reports the server as broken.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp

from ai_space.errors import QueueFull
from ai_space.generation import Delta, Finished, GenerationJob, TextTracker
from ai_space.llama.constraints import Pieces, Shaper, check
from ai_space.llama.model import GGUFChatModel
from ai_space.llama.sampling import Sampler, logits_rows, pick_batch

log = logging.getLogger("ai_space")

# KV cache element types llama.cpp takes (ggml_type ids). A quantised V cache needs flash
# attention, which llama.cpp's CPU backend has.
KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}


@dataclass
class _Seq:
    """One admitted request: its slot, how much of its prompt is in the cache, its sampler."""

    job: GenerationJob
    slot: int
    budget: int  # KV cells reserved: prompt plus the most tokens it may generate
    tracker: TextTracker
    sampler: Sampler
    fed: int = 0  # prompt tokens already decoded into the cache
    next_token: int | None = None  # sampled, not yet decoded
    done: bool = False
    outputs: list[int] = field(default_factory=list)
    shaper: Shaper | None = None  # logit_bias, penalties, logprobs, grammar: when asked for

    @property
    def prefilling(self) -> bool:
        """Whether part of the prompt is still to be decoded."""
        return self.next_token is None

    @property
    def position(self) -> int:
        """The position of the next token to decode."""
        return self.fed + self.job.completion_tokens


class LlamaEngine:
    """Owns a llama.cpp context: admission control, a queue, and the batched decode loop."""

    def __init__(self, chat: GGUFChatModel, *, n_ctx: int, n_threads: int, max_batch: int,
                 max_queue: int, kv_type: str = "q8_0", n_batch: int = 512,
                 step_gate: threading.Event | None = None,
                 on_finish: Callable[[Finished], None] | None = None) -> None:
        self.chat = chat
        self.n_ctx = n_ctx
        self.n_batch = max(n_batch, max_batch)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.step_gate = step_gate
        self.on_finish = on_finish
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = max_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = True  # any slot may use the whole cache (one long prompt fits)
        params.no_perf = True
        params.type_k = params.type_v = KV_TYPES[kv_type]
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = llama_cpp.llama_init_from_model(chat.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = chat.vocab.size
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._pieces = Pieces(chat)
        self._cond = threading.Condition()
        self._pending: collections.deque[GenerationJob] = collections.deque()
        self._active = 0  # queued + running; what admission control counts
        self._running: list[_Seq] = []
        self._free_slots = list(range(max_batch - 1, -1, -1))
        self._reserved = 0
        self._stopping = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="ai_space-llama", daemon=True)

    @property
    def alive(self) -> bool:
        """Whether the decode loop is running (False once it has died or been stopped)."""
        return self._thread.is_alive() and not self._failed

    def start(self) -> None:
        """Start the decode thread."""
        self._thread.start()

    def stop(self) -> None:
        """End queued and running generations as cancelled, end the thread, free the context."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(30)
        if not self._thread.is_alive() and self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, or raise QueueFull when every slot and queue place is taken."""
        if job.params.shaped:
            check(job.params, self.chat)  # a bad grammar or token id is a 400, not a failure
        with self._cond:
            if self._stopping or not self.alive or \
                    self._active >= self.max_batch + self.max_queue:
                raise QueueFull("server is busy: all generation slots and queue places are taken")
            self._active += 1
            self._pending.append(job)
            self._cond.notify()

    # The decode thread.

    def _run(self) -> None:
        try:
            while self._cycle():
                pass
        except BaseException:
            self._failed = True
            log.exception("the llama.cpp decode loop died")
        finally:
            with self._cond:
                leftovers = list(self._pending)
                self._pending.clear()
            for seq in list(self._running):
                self._finish(seq, "cancelled")
            for job in leftovers:
                self._emit_end(job, Finished("cancelled", len(job.prompt_ids), 0))

    def _cycle(self) -> bool:
        """Admit, decode one step, sample; False when the engine is stopping."""
        with self._cond:
            while not self._pending and not self._running and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return False
            rejected = self._admit()
        for job in rejected:
            self._emit_end(job, Finished("error", 0, 0, "empty prompt"))
        if not self._hold():
            return True
        if self.step_gate is not None:
            # Jobs that arrived while the loop was parked at the gate join this very step.
            with self._cond:
                late = self._admit()
            for job in late:
                self._emit_end(job, Finished("error", 0, 0, "empty prompt"))
        self._drop_cancelled()
        if not self._running:
            return True
        outputs, included = self._fill()
        rc = llama_cpp.llama_decode(self.ctx, self._batch)
        if rc != 0:
            # Nothing tells which request broke the step; end those in it, keep the rest.
            log.error("llama_decode failed (%d) for a batch of %d requests", rc, len(included))
            for seq in included:
                self._finish(seq, "error", error=f"llama_decode returned {rc}")
            return True
        self._sample(outputs, len(self._running))
        return True

    def _admit(self) -> list[GenerationJob]:
        """Move queued jobs into free slots while the KV cache can hold them (lock held).

        Returns the jobs that can never run (an empty prompt has no token to decode).
        """
        admitted: list[_Seq] = []
        rejected: list[GenerationJob] = []
        while self._pending and self._free_slots:
            job = self._pending[0]
            if not job.prompt_ids:
                rejected.append(self._pending.popleft())
                continue
            budget = len(job.prompt_ids) + job.params.max_tokens
            room = self.n_ctx - self._reserved
            if budget > room and (self._running or admitted):
                break  # wait for running requests to free cache
            self._pending.popleft()
            seq = _Seq(job, self._free_slots.pop(), min(budget, self.n_ctx),
                       TextTracker(self.chat.vocab, job.params.stop), Sampler(job.params))
            self._reserved += seq.budget
            self._running.append(seq)
            admitted.append(seq)
        return rejected

    def _hold(self) -> bool:
        """Wait at the step gate, if any; False when stopping or every request is gone."""
        # Test/ops hook: a closed step gate parks the loop before each decode. Cancelled
        # requests still end while parked, so a disconnect is seen without a step.
        if self.step_gate is not None:
            while not self.step_gate.wait(0.05):
                if self._stopping:
                    return False
                self._drop_cancelled()
        return bool(self._running)

    def _drop_cancelled(self) -> None:
        for seq in list(self._running):
            if seq.job.cancel.is_set():
                self._finish(seq, "cancelled")

    def _fill(self) -> tuple[dict[int, _Seq], list[_Seq]]:
        """Write this step's tokens into the batch: (batch index -> request, requests in it)."""
        batch = self._batch
        n = 0
        outputs: dict[int, _Seq] = {}
        included: list[_Seq] = []

        def add(token: int, pos: int, seq: _Seq, logits: bool) -> None:
            nonlocal n
            batch.token[n], batch.pos[n] = token, pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.slot
            batch.logits[n] = logits
            if not included or included[-1] is not seq:
                included.append(seq)
            if logits:
                outputs[n] = seq
            n += 1

        for seq in self._running:
            if seq.next_token is not None:
                add(seq.next_token, seq.position - 1, seq, True)
        for seq in self._running:
            if not seq.prefilling:
                continue
            room = self.n_batch - n
            if room <= 0:
                break
            prompt = seq.job.prompt_ids
            chunk = prompt[seq.fed:seq.fed + room]
            for offset, token in enumerate(chunk):
                last = seq.fed + offset == len(prompt) - 1
                add(token, seq.fed + offset, seq, last)
            seq.fed += len(chunk)
        batch.n_tokens = n
        return outputs, included

    def _sample(self, outputs: dict[int, _Seq], size: int) -> None:
        """Pick every request's next token from this step's logits at once, and pass each on."""
        order = sorted(outputs)  # llama.cpp keeps one row of logits per output, in batch order
        seqs = [outputs[index] for index in order]
        for seq in seqs:
            if seq.next_token is None:
                seq.job.batch_size = size  # its prompt finished in a batch of `size`
        # A request with logit_bias, penalties, logprobs or a grammar goes through its own
        # shaper (constraints.py), row by row; the rest are picked together.
        plain = [i for i, seq in enumerate(seqs) if not seq.job.params.shaped]
        for i, seq in enumerate(seqs):
            if seq.job.params.shaped:
                self._after_decode(seq, order[i])
        if not plain:
            return
        try:
            rows = logits_rows(llama_cpp.llama_get_logits(self.ctx), len(seqs), self.n_vocab)
            if len(plain) < len(seqs):
                rows = rows[plain]
            tokens = pick_batch(rows, [seqs[i].sampler for i in plain])
        except Exception:
            # Something in one request broke the batch pass: sample one by one, so that only
            # the request at fault ends.
            log.exception("batch sampling failed; sampling this step request by request")
            for i in plain:
                self._after_decode(seqs[i], order[i])
            return
        for seq, token in zip((seqs[i] for i in plain), tokens, strict=True):
            try:
                if not seq.done:
                    self._advance(seq, token)
            except Exception as exc:
                log.exception("generation failed for one request")
                self._finish(seq, "error", error=type(exc).__name__)

    def _after_decode(self, seq: _Seq, index: int) -> None:
        """Sample one request's next token from its logits and pass it on; contain errors."""
        try:
            if seq.done:
                return
            logits = llama_cpp.llama_get_logits_ith(self.ctx, index)
            if seq.job.params.shaped:
                if seq.shaper is None:
                    seq.shaper = Shaper(seq.job, self.chat, self._pieces)
                token = seq.shaper.pick(logits, self.n_vocab, seq.sampler.pick)
            else:
                token = seq.sampler.pick(logits, self.n_vocab)
            self._advance(seq, token)
        except Exception as exc:
            log.exception("generation failed for one request")
            self._finish(seq, "error", error=type(exc).__name__)

    def _advance(self, seq: _Seq, token: int) -> None:
        """Record one token for a request, and end it at EOS, a stop string or its limit."""
        if token in self.chat.eos_ids:
            self._finish(seq, "stop")
            return
        seq.job.completion_tokens += 1
        seq.next_token = token
        text = seq.tracker.push(token)
        if text:
            seq.job.emit(Delta(text))
        if seq.tracker.stopped:
            self._finish(seq, "stop")
        elif seq.job.completion_tokens >= seq.job.params.max_tokens or \
                seq.position >= seq.budget:
            self._finish(seq, "length")

    def _finish(self, seq: _Seq, reason: str, error: str | None = None) -> None:
        """End a request: free its slot and cache, send its last text and its end event."""
        if seq.done:
            return
        seq.done = True
        if seq.shaper is not None:
            seq.shaper.close()
        llama_cpp.llama_memory_seq_rm(self.memory, seq.slot, -1, -1)
        with self._cond:
            self._running.remove(seq)
            self._free_slots.append(seq.slot)
            self._reserved -= seq.budget
        try:
            if reason in {"stop", "length"}:
                tail = seq.tracker.flush()
                if tail:
                    seq.job.emit(Delta(tail))
        except Exception:
            log.exception("could not send the end of an answer")
            reason, error = "error", "flush"
        self._emit_end(seq.job, Finished(reason, len(seq.job.prompt_ids),
                                         seq.job.completion_tokens, error, seq.job.batch_size))

    def _emit_end(self, job: GenerationJob, event: Finished) -> None:
        with self._cond:
            self._active -= 1
        try:
            job.emit(event)
            if self.on_finish is not None:
                self.on_finish(event)
        except Exception:
            log.exception("could not deliver the end of a request")
