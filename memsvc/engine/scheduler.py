"""The inference engine: one model thread runs prefills and batched decode steps.

The queue holds plain requests (:mod:`memsvc.engine.requests`): token ids, states,
bank views and sampling parameters, never functions. Every loop iteration the
scheduler

1. takes the requests that arrived since the last step. A request whose prefill is
   one plain prompt (no memory read, no capture) waits for step 2; any other prefill
   runs at once (its segments in order, reading the banks and capturing hidden states
   where a segment says so);
2. feeds the plain prompts of this round as ONE batched prefill (right-padded rows
   with their lengths, stacked states; see ``ModelRuntime.prefill_rows``);
3. answers each request with its :class:`PrefillResult`; a :class:`GenerateRequest`
   then samples its first token at once (time-to-first-token does not grow with the
   number of prompts prefilled one after another) and joins the decode batch. A turn
   with a contrast prompt (its turn without the memory note) has that prompt fed in the
   same call (from :data:`CONTRAST_OWN_CALL` of them, in a second call), and its first
   token is chosen by context-aware decoding;
4. advances every decoding turn by one token in as few ``model.step`` calls as
   possible: turns are grouped by the banks they read (same group → one batched
   step), states are stacked to (B, ...), stepped, and unbound again.

Turns leave as soon as their closing ``<|end|>`` has been fed (so the state they hand
back ends on a turn boundary). Nothing here does I/O: loading states and banks and
committing a turn happen before and after, on the thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from memsvc.engine.requests import (
    DoneEvent,
    ErrorEvent,
    EventSink,
    GenerateRequest,
    PrefillRequest,
    PrefillResult,
    Request,
    TokenEvent,
)
from memsvc.engine.runtime import ModelRuntime
from memsvc.metrics import Metrics
from retnet_core.sampling import SamplingParams, contrast_context, sample

log = logging.getLogger("memsvc.engine.scheduler")

__all__ = ["DecodeJob", "DoneEvent", "ErrorEvent", "Scheduler", "TokenEvent"]

#: from this many contrast rows in one round they get their own batched prefill call.
#: Measured on 2 EPYC cores, int8, noted rows of 38–58 tokens and their contrasts of
#: 15–19: one call / two calls took 464 / 566 ms for 1 turn, 705 / 766 for 2, 1253 /
#: 1156 for 4 and 2596 / 1985 for 8
CONTRAST_OWN_CALL = 4


@dataclass
class DecodeJob:
    """One turn in the decode batch, built from a GenerateRequest after its prefill."""

    state: Any
    logits: Tensor  # (V,) next-token logits
    params: SamplingParams
    max_new: int
    stops: list[str]
    sink: EventSink
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
    forced: list[int] | None = None  # the reply's tokens still to say (no sampling)


class Scheduler:
    """Owns the model thread; see the module docstring."""

    def __init__(self, runtime: ModelRuntime, metrics: Metrics, max_batch: int = 64) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.max_batch = max_batch
        self._work: queue.Queue[tuple[Request | None, Future]] = queue.Queue()
        self._active: list[DecodeJob] = []
        self._ready: list[tuple[Request, Future]] = []  # plain prompts of this round
        self.prefill_batches: list[int] = []  # rows of each batched prefill (recent)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memsvc-scheduler", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._work.put((None, Future()))
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ API
    def submit(self, request: Request) -> Future:
        """Queue a request; the future resolves to its :class:`PrefillResult`."""
        if not isinstance(request, PrefillRequest | GenerateRequest):
            raise TypeError(f"the scheduler takes plain requests, not {type(request).__name__}")
        fut: Future = Future()
        self._work.put((request, fut))
        return fut

    async def run(self, request: Request) -> PrefillResult:
        """Await a request's prefill result (a GenerateRequest goes on decoding)."""
        return await asyncio.wrap_future(self.submit(request))

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
                        job.sink.put(ErrorEvent(exc))
                    self._active.clear()

    def _drain_work(self, block: bool) -> None:
        """Take every queued request; block for the first one when nothing is decoding."""
        try:
            item = self._work.get(timeout=0.5) if block else self._work.get_nowait()
        except queue.Empty:
            return
        while True:
            self._take(*item)
            if len(self._active) + len(self._ready) >= self.max_batch:
                return
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _prefill_of(request: Request) -> PrefillRequest:
        return request.prefill if isinstance(request, GenerateRequest) else request

    def _take(self, request: Request | None, fut: Future) -> None:
        """Plain prompts wait for the round's batched prefill; other prefills run now."""
        if request is None or not fut.set_running_or_notify_cancel():
            return
        if self._prefill_of(request).batchable:
            self._ready.append((request, fut))
            return
        try:
            result = self._prefill(self._prefill_of(request))
        except BaseException as exc:
            fut.set_exception(exc)
            return
        self._answer(request, fut, result)

    def _prefill(self, req: PrefillRequest) -> PrefillResult:
        """Feed the segments in order (one model call each); see :class:`Segment`."""
        result = PrefillResult(logits=None, state=req.state)
        for seg in req.segments:
            capture: dict | None = {} if seg.capture else None
            memory = req.memory if seg.read_memory else None
            out = self.runtime.prefill(seg.ids, result.state, list(seg.cuts), memory, capture)
            result.state, result.logits = out.state, out.logits
            if seg.keep:
                result.kept.append(out.state)
            if capture is not None:
                result.capture = capture
        return result

    def _answer(
        self, request: Request, fut: Future, result: PrefillResult, contrast: Tensor | None = None
    ) -> None:
        """Resolve the future; a generate request samples its first token and joins.
        ``contrast``: the logits after the request's contrast prompt, when the batched
        prefill already fed it."""
        if isinstance(request, GenerateRequest):
            try:
                job = self._job(request, result, contrast)
            except BaseException as exc:
                fut.set_exception(exc)
                return
            self._active.append(job)
        fut.set_result(result)

    def _job(
        self, request: GenerateRequest, result: PrefillResult, contrast: Tensor | None = None
    ) -> DecodeJob:
        logits = result.logits if request.prefill.segments else request.logits
        if logits is None:
            raise ValueError("a generate request without segments needs its logits")
        if _contrasts(request):
            if contrast is None:  # fed alone, after the same state as the prompt
                contrast = self.runtime.prefill(request.contrast, request.prefill.state, []).logits
            logits = contrast_context(logits, contrast, request.contrast_weight)
        job = DecodeJob(
            state=result.state,
            logits=logits,
            params=request.params,
            max_new=request.max_new,
            stops=list(request.stops),
            sink=request.sink,
            group=request.group,
            memory=request.prefill.memory,
            started=request.started,
            forced=None if request.forced is None else list(request.forced),
        )
        job.generator = job.params.generator()
        job.pending = self._next_input(job)  # first token now, not after a step
        return job

    def _prefill_ready(self) -> None:
        """One batched prefill of every ready prompt; first tokens are sampled and sent."""
        ready, self._ready = self._ready, []
        prefills = [self._prefill_of(r) for r, _ in ready]
        rows = [p.segments[0].ids for p in prefills]
        states = [p.state for p in prefills]
        # contrast prompts (a note's turn without the note) are fed in the same call, or
        # in their own when there are many: they are far shorter than the noted rows,
        # and padding them to their width costs more than a second call
        contrasted = [i for i, (r, _) in enumerate(ready) if _contrasts(r)]
        extra_rows = [ready[i][0].contrast for i in contrasted]
        extra_states = [prefills[i].state for i in contrasted]
        if len(contrasted) >= CONTRAST_OWN_CALL:
            batches = [(rows, states), (extra_rows, extra_states)]
        else:
            batches = [(rows + extra_rows, states + extra_states)]
        try:
            outs = [out for batch in batches for out in self.runtime.prefill_rows(*batch)]
        except BaseException as exc:  # the turns fail, the thread goes on
            log.exception("batched prefill failed")
            for _, fut in ready:
                fut.set_exception(exc)
            return
        self.prefill_batches = [*self.prefill_batches[-999:], len(outs)]
        contrasts = dict(zip(contrasted, (o.logits for o in outs[len(ready) :]), strict=True))
        for i, ((request, fut), out) in enumerate(zip(ready, outs[: len(ready)], strict=True)):
            result = PrefillResult(logits=out.logits, state=out.state)
            self._answer(request, fut, result, contrasts.get(i))

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
        tok = self._choose(job)
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

    def _choose(self, job: DecodeJob) -> int:
        """The next reply token: sampled, or the next forced one (``<|end|>`` after it)."""
        if job.forced is not None:
            return job.forced.pop(0) if job.forced else self.runtime.tokenizer.end_id
        return int(
            sample(
                job.logits[None],
                job.params,
                job.generator,
                seen=self._seen(job),
                banned=(self.runtime.tokenizer.pad_id,),
            )[0]
        )

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
            job.sink.put(TokenEvent(text[job.emitted : safe]))
            job.emitted = safe

    def _finish(self, job: DecodeJob) -> None:
        """The closing ``<|end|>`` was fed: flush held-back text and hand back the state."""
        job.finish, job.done = job.finish or "stop", True
        text = job.text.rstrip("\ufffd") if job.finish != "stop_sequence" else job.text
        if len(text) > job.emitted:
            job.sink.put(TokenEvent(text[job.emitted :]))
            job.emitted = len(text)
        ttft = None if job.first_token_at is None else job.first_token_at - job.started
        job.sink.put(DoneEvent(job.finish, text, list(job.generated), job.state, ttft))


def _contrasts(request: Request) -> bool:
    """A generate request whose first token is chosen against a contrast prompt."""
    return (
        isinstance(request, GenerateRequest)
        and bool(request.contrast)
        and request.forced is None
        and request.contrast_weight != 0
    )
