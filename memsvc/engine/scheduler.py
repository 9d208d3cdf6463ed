"""The inference engine: one scheduler thread owns the model and batches decode steps.

Continuous batching: every loop iteration the scheduler

1. runs the work that arrived since the last step (prefills of new turns, debug probes,
   memory writes), each a function executed on this thread, so the model never sees
   two callers at once;
2. feeds the prompts of every turn that became ready in step 1 as ONE batched prefill
   (a function may return a :class:`PromptPrefill` instead of a finished DecodeJob:
   right-padded rows with their lengths, stacked states; see
   ``ModelRuntime.prefill_rows``), samples each turn's first token from its row's
   logits and emits it at once, so time-to-first-token does not grow with the number of
   turns prefilled one after another;
3. advances every active turn by one token in as few ``model.step`` calls as possible:
   turns are grouped by their memory bank (same bank → one batched step), states are
   stacked to (B, ...), stepped, and unbound again.

Turns join after their prefill and leave as soon as their closing ``<|end|>`` has been
fed (so the state they hand back ends on a turn boundary). Events (text deltas, the
final state) are pushed to the request's asyncio loop thread-safely.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from memsvc.engine.runtime import ModelRuntime
from memsvc.metrics import Metrics
from retnet_core.sampling import SamplingParams, sample

log = logging.getLogger("memsvc.engine.scheduler")


@dataclass
class TokenEvent:
    """New text of the reply (never text that a stop sequence will cut away)."""

    text: str


@dataclass
class DoneEvent:
    """The turn's decode is over: its final state ends right after ``<|end|>``."""

    finish_reason: str  # "stop" | "length" | "stop_sequence"
    text: str
    token_ids: list[int]
    state: Any
    ttft_s: float | None


@dataclass
class ErrorEvent:
    """Decoding failed; nothing of this turn was persisted."""

    error: BaseException


@dataclass
class DecodeJob:
    """One turn in the decode batch. Built by a prefill on the scheduler thread."""

    state: Any
    logits: Tensor  # (V,) next-token logits after the prefill
    params: SamplingParams
    max_new: int
    stops: list[str]
    emit: Callable[[object], None]
    group: str = ""  # turns with equal group share one batched step (same memory banks)
    memory: Any = None  # layer index -> slot bank, read during every step
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the reply already sent
    closing: bool = False  # next fed token is <|end|>
    done: bool = False  # <|end|> was fed; the job leaves the batch
    finish: str | None = None
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    generator: Any = None
    pending: int | None = None  # sampled right after the prefill, fed by the next step


@dataclass
class PromptPrefill:
    """A turn whose last prompt (``ids`` after ``state``, None: new session) can be fed
    batched with other turns' prompts (no memory read, no capture, no boundaries).

    ``finish`` builds the turn's DecodeJob from its row's :class:`Prefilled`.
    """

    ids: list[int]
    state: Any
    finish: Callable[[Any], DecodeJob]


class Scheduler:
    """Owns the model thread; see the module docstring."""

    def __init__(self, runtime: ModelRuntime, metrics: Metrics, max_batch: int = 64) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.max_batch = max_batch
        self._work: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._active: list[DecodeJob] = []
        self._ready: list[tuple[PromptPrefill, Future]] = []  # prompts of this round
        self.prefill_batches: list[int] = []  # rows of each batched prefill (recent)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memsvc-scheduler", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._work.put((lambda: None, Future()))
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ API
    def submit(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the scheduler thread; a DecodeJob result joins the batch."""
        fut: Future = Future()
        self._work.put((fn, fut))
        return fut

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Await ``fn()`` run on the scheduler thread (for model work outside decoding)."""
        return await asyncio.wrap_future(self.submit(fn))

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_work(block=not self._active)
            if self._ready:
                self._prefill_ready()
            if self._active:
                try:
                    self._step_all()
                except Exception as exc:  # a failed step fails its turns, never the thread
                    log.exception("decode step failed")
                    for job in self._active:
                        job.emit(ErrorEvent(exc))
                    self._active.clear()

    def _drain_work(self, block: bool) -> None:
        """Run every queued function; block for the first one when nothing is decoding."""
        try:
            item = self._work.get(timeout=0.5) if block else self._work.get_nowait()
        except queue.Empty:
            return
        while True:
            self._run_one(*item)
            if len(self._active) + len(self._ready) >= self.max_batch:
                return
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return

    def _run_one(self, fn: Callable[[], Any], fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as exc:
            fut.set_exception(exc)
            return
        if isinstance(result, PromptPrefill):
            self._ready.append((result, fut))  # answered by _prefill_ready
            return
        if isinstance(result, DecodeJob):
            result.generator = result.params.generator()
            self._active.append(result)
        fut.set_result(result)

    def _prefill_ready(self) -> None:
        """One batched prefill of every ready prompt; first tokens are sampled and sent."""
        ready, self._ready = self._ready, []
        try:
            outs = self.runtime.prefill_rows([p.ids for p, _ in ready], [p.state for p, _ in ready])
        except BaseException as exc:  # the turns fail, the thread goes on
            log.exception("batched prefill failed")
            for _, fut in ready:
                fut.set_exception(exc)
            return
        self.prefill_batches = [*self.prefill_batches[-999:], len(ready)]
        for (prompt, fut), out in zip(ready, outs, strict=True):
            try:
                job = prompt.finish(out)
                job.generator = job.params.generator()
                job.pending = self._next_input(job)  # first token now, not after a step
            except BaseException as exc:
                fut.set_exception(exc)
                continue
            self._active.append(job)
            fut.set_result(job)

    def _step_all(self) -> None:
        """Advance every active turn by one token; finished turns leave the batch."""
        groups: dict[str, list[DecodeJob]] = {}
        for job in self._active:
            groups.setdefault(job.group, []).append(job)
        for jobs in groups.values():
            tokens = [self._next_input(job) for job in jobs]
            self.metrics.batch_size.observe(len(jobs))
            if len(jobs) == 1:
                logits, state = self.runtime.step(tokens, jobs[0].state, jobs[0].memory)
                states = [state]
            else:
                batched = self.runtime.stack([j.state for j in jobs])
                logits, state = self.runtime.step(tokens, batched, jobs[0].memory)
                states = self.runtime.unbind(state)
            for job, tok, row, st in zip(jobs, tokens, logits, states, strict=True):
                job.state, job.logits = st, row
                if tok == self.runtime.tokenizer.end_id:
                    self._finish(job)
        self._active = [j for j in self._active if not j.done]
        self.metrics.active_sessions.set(len(self._active))

    @staticmethod
    def _seen(job: DecodeJob):
        """(1, V) mask of the reply's tokens so far, only when a repetition penalty applies."""
        if job.params.repetition_penalty == 1.0:
            return None
        seen = torch.zeros(1, job.logits.shape[-1], dtype=torch.bool)
        seen[0, job.generated] = True
        return seen

    def _next_input(self, job: DecodeJob) -> int:
        """The token to feed for ``job``: a new sample, or ``<|end|>`` when it is closing."""
        end_id = self.runtime.tokenizer.end_id
        if job.pending is not None:
            tok, job.pending = job.pending, None
            return tok
        if job.closing:
            return end_id
        tok = int(
            sample(
                job.logits[None],
                job.params,
                job.generator,
                seen=self._seen(job),
                banned=(self.runtime.tokenizer.pad_id,),
            )[0]
        )
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
            self.metrics.ttft.observe(job.first_token_at - job.started)
        if tok == end_id:
            job.closing, job.finish = True, job.finish or "stop"
            return tok
        job.generated.append(tok)
        self._emit_text(job)
        if job.finish is None and len(job.generated) >= job.max_new:
            job.finish = "length"
        if job.finish is not None:
            job.closing = True
        return tok

    def _emit_text(self, job: DecodeJob) -> None:
        """Send the new safe text; cut at the first stop sequence."""
        # NUL cannot be stored in a PostgreSQL text column: show it as U+FFFD
        text = self.runtime.tokenizer.decode(job.generated, skip_special=True).replace(
            "\x00", "\ufffd"
        )
        for stop in job.stops:
            at = text.find(stop)
            if at >= 0:
                text, job.finish = text[:at], "stop_sequence"
        job.text = text
        safe = len(text)
        if job.finish is None:
            if text.endswith("\ufffd"):  # an unfinished UTF-8 character
                safe = len(text.rstrip("\ufffd"))
            hold = max((len(s) - 1 for s in job.stops), default=0)
            safe = max(job.emitted, safe - hold)
        if safe > job.emitted:
            job.emit(TokenEvent(text[job.emitted : safe]))
            job.emitted = safe

    def _finish(self, job: DecodeJob) -> None:
        """The closing ``<|end|>`` was fed: flush held-back text and hand back the state."""
        job.finish, job.done = job.finish or "stop", True
        text = job.text.rstrip("\ufffd") if job.finish != "stop_sequence" else job.text
        if len(text) > job.emitted:
            job.emit(TokenEvent(text[job.emitted :]))
            job.emitted = len(text)
        ttft = None if job.first_token_at is None else job.first_token_at - job.started
        job.emit(DoneEvent(job.finish, text, list(job.generated), job.state, ttft))


def async_emitter(loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> Callable[[object], None]:
    """An ``emit`` callable that hands events from the scheduler thread to ``q`` on ``loop``."""

    def emit(event: object) -> None:
        loop.call_soon_threadsafe(q.put_nowait, event)

    return emit
