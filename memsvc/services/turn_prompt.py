"""A turn's prompt as plain data: retrieved passages fed (or their cached snapshots),
the memory note, the user turn and ``<|assistant|>``, and what the engine reads.

:class:`TurnPrompt` is step 4–5 of :mod:`memsvc.services.turns`: it turns a loaded
state and a request into the :class:`~memsvc.engine.requests.GenerateRequest` the
model thread runs, and records in :class:`Prepared` what the commit and ``usage``
need. It does no SQL itself: passages and snapshots go through the thread pool, the
feeding through the scheduler.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from memsvc.config import Settings
from memsvc.engine.requests import (
    AsyncSink,
    DoneEvent,
    ErrorEvent,
    GenerateRequest,
    PrefillRequest,
    Segment,
)
from memsvc.engine.runtime import ModelRuntime
from memsvc.engine.scheduler import Scheduler
from memsvc.rag.feed import PassageFeeder, RetrievedPassage
from memsvc.records import MessageCreate, PassageRef
from memsvc.services.memory_notes import NoteTurn, asks_about_user
from memsvc.services.note_check import (
    CHECK_TOKENS,
    kept_after_check,
    lines_to_check,
    refusal_pattern,
)
from memsvc.services.system_prompts import SystemPromptCache
from memsvc.store import SessionRec
from memsvc.threads import run_in_threadpool
from retnet_core.memory_note import note_text


@dataclass
class Prepared:
    """What the prefill produced, besides the decode job."""

    prompt_tokens: int = 0
    passage_tokens: int = 0
    passages: list[PassageRef] = field(default_factory=list)
    snapshot_hits: int = 0
    snapshot_misses: int = 0
    turn_tokens: int = 0  # tokens this turn adds to the session's history
    banks: Any = None  # memory-layer index -> slot bank read by this turn
    capture: Any = None  # memsvc.memory.TurnCapture for the end-of-turn write
    forgotten: list[str] = field(default_factory=list)  # slots a forget request removed
    forgotten_memories: list[str] = field(default_factory=list)  # and their memories
    memory_full: bool = False  # the user holds the memory limit: this turn writes none
    notes: Any = None  # memsvc.services.memory_notes.NoteTurn (a model without memory layers)
    offset: int = 0  # session position where the user turn starts
    user_end: int = 0  # the user turn's ``<|end|>`` within the prompt


class TurnPrompt:
    """Builds a turn's :class:`GenerateRequest` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        runtime: ModelRuntime,
        scheduler: Scheduler,
        feeder: PassageFeeder,
        retriever: Any,
        memory: Any,
        system_prompts: SystemPromptCache,
    ) -> None:
        self.settings, self.runtime, self.scheduler = settings, runtime, scheduler
        self.feeder, self.retriever, self.memory = feeder, retriever, memory
        self.system_prompts = system_prompts
        self.refusal = refusal_pattern(settings.memory_note_refusal)

    async def retrieve(self, session: SessionRec, req: MessageCreate) -> list[RetrievedPassage]:
        """Top-k passages above the threshold for this message (empty when RAG is off)."""
        if not (req.use_documents and self.settings.rag_enabled and self.retriever is not None):
            return []
        if self.settings.rag_top_k <= 0:
            return []
        return await run_in_threadpool(
            self.retriever.retrieve,
            session.tenant_id,
            session.user_id,
            req.content,
            self.settings.rag_top_k,
            self.settings.rag_threshold,
        )

    async def request(
        self, session, loaded, state, passages, req, max_new, prep, events
    ) -> GenerateRequest:
        """The turn as plain data: the state after the system prompt (shared, cached) and
        the passages (cached snapshots; misses fed here), then the user turn and
        ``<|assistant|>`` to prefill and decode.

        Without memory the prompt is plain: the scheduler feeds it batched with the other
        turns ready in the same round. With banks it reads them and its hidden states
        are captured for the memory write. A copying model also reads the fed passages
        from a turn-local bank.
        """
        tok = self.runtime.tokenizer
        # empty banks read exactly zero: such turns decode with memory=None, so they can
        # share batched steps with every other session (a bank is per tenant and scope)
        reads = prep.banks if prep.banks and any(len(b) for b in prep.banks.values()) else None
        data, head = loaded.data, 0
        if data is None and session.system_prompt:
            system = await self.system_prompts.get(session.tenant_id, session.system_prompt)
            data, head = system.data, system.tokens
            state = await run_in_threadpool(self.runtime.state_from_bytes, data)
        if passages:
            state = await self._feed(session, state, data, passages, prep)
            if self.memory is not None and self.memory.reads_passages:
                texts = [p.text for p in passages]
                reads = await self.memory.passage_reads(reads, texts)
        if prep.notes and self.settings.memory_note_check:
            prep.notes = await self._checked(prep.notes, state, req.content)
        note = (
            tok.render_turn({"role": "system", "content": prep.notes.note})
            if (prep.notes and prep.notes.note)
            else []
        )
        user = tok.render_turn({"role": "user", "content": req.content})
        ids = note + user + tok.generation_prompt()
        prep.prompt_tokens = head + prep.passage_tokens + len(ids)
        prep.turn_tokens = prep.prompt_tokens
        prep.offset = 0 if state is None else int(state.position.reshape(-1)[0])
        prep.user_end = len(note) + len(user) - 1
        params = self.runtime.sampling.with_overrides(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
        )
        if not prep.banks and reads is None:  # nothing read or captured: batched prefill
            prompt = Segment(ids)
        else:
            prompt = Segment(
                ids, (len(note) + len(user),), read_memory=True, capture=bool(prep.banks)
            )
        # a question about the user: its reply's first token is chosen against the same
        # turn without the note, so a note the model would read past still moves it
        # (context-aware decoding); small talk beside a note is left as the model says it
        contrast = (
            bool(note) and self.settings.memory_note_contrast > 0 and asks_about_user(req.content)
        )
        return GenerateRequest(
            prefill=PrefillRequest([prompt], state, reads),
            params=params,
            max_new=max_new,
            sink=AsyncSink(asyncio.get_running_loop(), events),
            stops=list(req.stop),
            group=_group(reads),
            contrast=user + tok.generation_prompt() if contrast else None,
            contrast_weight=self.settings.memory_note_contrast,
        )

    async def _checked(self, notes: NoteTurn, state: Any, content: str) -> NoteTurn:
        """The turn's note less the lines the model refuses to answer from alone
        (:mod:`memsvc.services.note_check`); checks run from the turn's own ``state``."""
        checked = lines_to_check(notes.lines, asks_about_user(content))
        if not checked:
            return notes

        async def replies_of(texts: list[str]) -> list[str]:
            return list(await asyncio.gather(*(self._quiet(state, t, content) for t in texts)))

        _, out = await kept_after_check(notes.lines, checked, replies_of, self.refusal)
        counted = self.scheduler.metrics.note_checks
        counted.labels("left_out").inc(len(out))
        counted.labels("kept").inc(len(checked) - len(out))
        return notes.without(out) if out else notes

    async def _quiet(self, state: Any, line: str, content: str) -> str:
        """The greedy start (:data:`CHECK_TOKENS`) of the reply to ``content`` after
        ``state`` and a note of ``line`` alone, contrasted as the turn is. Nothing of it
        is kept: its events go to a local queue."""
        events: asyncio.Queue = asyncio.Queue()
        sink = AsyncSink(asyncio.get_running_loop(), events)
        weight = self.settings.memory_note_contrast
        await self.scheduler.run(check_request(self.runtime, state, line, content, weight, sink))
        while True:
            event = await events.get()
            if isinstance(event, DoneEvent):
                return event.text
            if isinstance(event, ErrorEvent):
                raise event.error

    async def _feed(self, session, state, start_data, passages, prep: Prepared) -> Any:
        """Passages after ``state``: cached snapshots (thread pool), the rest fed by the
        engine, their snapshots stored (thread pool). Returns the state after them."""
        start_hash = self.runtime.state_hash(start_data)
        plan = await run_in_threadpool(self.feeder.plan, session.tenant_id, start_hash, passages)
        if plan.cached is not None:
            state = await run_in_threadpool(self.runtime.state_from_bytes, plan.cached)
        if plan.segments:
            result = await self.scheduler.run(PrefillRequest(plan.segments, state))
            state = result.state
            await run_in_threadpool(self.feeder.store, plan, result.kept)
        fed = plan.fed()
        prep.passage_tokens = sum(f.tokens for f in fed)
        prep.snapshot_hits = sum(f.snapshot_hit for f in fed)
        prep.snapshot_misses = len(fed) - prep.snapshot_hits
        prep.passages = [
            PassageRef(
                passage_id=f.passage.passage_id,
                document_id=f.passage.document_id,
                score=f.passage.score,
                tokens=f.tokens,
                boundary=f.boundary,
                snapshot_hit=f.snapshot_hit,
            )
            for f in fed
        ]
        return state


def check_request(
    runtime: ModelRuntime, state: Any, line: str, content: str, weight: float, sink: Any
) -> GenerateRequest:
    """The note check's run of ``content`` after ``state`` with ``line`` alone as its
    note: greedy whatever the turn samples with (a read, not the reply), at most
    :data:`CHECK_TOKENS` tokens, the first contrasted against no note at ``weight``."""
    tok = runtime.tokenizer
    user = tok.render_turn({"role": "user", "content": content}) + tok.generation_prompt()
    noted = tok.render_turn({"role": "system", "content": note_text([line])}) + user
    return GenerateRequest(
        prefill=PrefillRequest([Segment(noted)], state),
        params=runtime.sampling.with_overrides(temperature=0.0),
        max_new=CHECK_TOKENS,
        sink=sink,
        contrast=user if weight > 0 else None,
        contrast_weight=weight,
    )


def _group(reads: Any) -> str:
    """Decode steps are shared by turns that read the same banks: the session's
    namespace, or this turn alone when it also reads its own passages."""
    if not reads:
        return ""
    # each turn reads its own view of the banks (its reads, forgets and writes are
    # its own until the commit), so a turn with memory decodes in a group of one
    return f"turn:{id(reads)}"
