"""One chat turn, top to bottom: lock → load state → RAG → prefill → decode → commit.

:class:`TurnManager` is what the messages router calls. A turn

1. checks the request against the limits (413), takes a place among the tenant's
   running turns (429 past ``limit_concurrent_turns``; given back when the turn ends) and
   checks the session's ownership (404);
2. answers from the idempotency key when this exact turn was already committed;
3. takes the session's lock (busy → 409, or waits ``lock_wait_s``);
4. loads, on the thread pool, the state (Redis → SQL; a new session starts from its
   system prompt's shared state), the bank views and cached passage snapshots;
5. hands the engine plain data (a :class:`GenerateRequest`, built by
   :class:`memsvc.services.turn_prompt.TurnPrompt`: passages, the memory note, the user
   turn and ``<|assistant|>`` to prefill, the state, the views, sampling parameters);
   the model thread prefills, joins the decode batch and streams text events;
6. computes the memory write into the turn's bank views (thread pool, tensors only),
   then commits the two messages, the new state (compare-and-set on the version) and
   the views' new, removed and read slots in one transaction, and only then reports
   completion.

The turn runs as its own asyncio task, so a client that disconnects mid-stream does
not cancel it: an accepted turn always ends committed or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from memsvc.config import Settings
from memsvc.engine.requests import (
    DoneEvent,
    ErrorEvent,
    PrefillRequest,
    TokenEvent,
)
from memsvc.engine.runtime import ModelRuntime
from memsvc.engine.scheduler import Scheduler
from memsvc.errors import BadRequest, Conflict, SessionBusy, TooLarge, Unavailable
from memsvc.metrics import Metrics
from memsvc.rag.feed import PassageFeeder
from memsvc.records import MessageCreate, MessageOut, TurnOut, Usage
from memsvc.services.forget import confirmation, parse_forget
from memsvc.services.limits import TenantLimits
from memsvc.services.memory import TurnCapture
from memsvc.services.rebuild import load_or_none, rebuild
from memsvc.services.system_prompts import SystemPromptCache
from memsvc.services.turn_prompt import Prepared, TurnPrompt
from memsvc.store import Busy, LoadedState, SessionRec, Store, TurnCommit
from memsvc.threads import run_in_threadpool

log = logging.getLogger("memsvc.services.turns")


@dataclass
class Turn:
    """A running turn: its event queue and the final result once committed."""

    queue: asyncio.Queue
    task: asyncio.Task | None = None
    result: TurnOut | None = None


class TurnManager:
    """Runs turns; owns the access check, the lock and the commit."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: ModelRuntime,
        scheduler: Scheduler,
        feeder: PassageFeeder,
        retriever: Any,
        memory: Any,
        metrics: Metrics,
        system_prompts: SystemPromptCache | None = None,
        limits: TenantLimits | None = None,
        notes: Any = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.scheduler = scheduler
        self.feeder = feeder
        self.retriever = retriever
        self.memory = memory
        self.metrics = metrics
        self.system_prompts = system_prompts or SystemPromptCache(runtime, scheduler)
        self.limits = limits or TenantLimits(settings, store, metrics)
        self.notes = notes  # memsvc.services.memory_notes.NoteMemory, or None
        self.prompt = TurnPrompt(
            settings, runtime, scheduler, feeder, retriever, memory, self.system_prompts
        )

    # ------------------------------------------------------------------ checks
    def check_limits(self, req: MessageCreate) -> int:
        """413 for input over the configured limits; returns the max new tokens."""
        s = self.settings
        if len(req.content) > s.max_message_chars:
            raise TooLarge(f"content is longer than {s.max_message_chars} characters")
        if len(req.stop) > s.max_stop_sequences:
            raise TooLarge(f"at most {s.max_stop_sequences} stop sequences")
        if req.max_tokens is None:  # the checkpoint's default, within the operator's limit
            return min(self.runtime.sampling.max_new_tokens, s.max_new_tokens)
        if req.max_tokens > s.max_new_tokens:
            raise TooLarge(f"max_tokens exceeds the limit of {s.max_new_tokens}")
        return req.max_tokens

    # ------------------------------------------------------------------ entry points
    async def start(self, tenant_id: str, session_id: str, req: MessageCreate) -> Turn:
        """Validate, then either replay a committed turn or start a new one."""
        max_new = self.check_limits(req)
        turn = Turn(queue=asyncio.Queue())
        place = await self._take_place(tenant_id)  # 429 past the concurrent-turn limit
        try:
            # one thread-pool hop: the session (404), a committed replay, else the lock
            session, done, lock = await run_in_threadpool(
                self._open, tenant_id, session_id, req.idempotency_key, req.content
            )
        except BaseException:
            await self._give_back(tenant_id, place)
            raise
        if done is not None:
            await self._give_back(tenant_id, place)
            turn.result = self._replayed(session, *done)
            return turn
        turn.task = asyncio.create_task(self._run(turn, (lock, place), session, req, max_new))
        return turn

    async def _take_place(self, tenant_id: str) -> str | None:
        if not self.settings.limit_concurrent_turns:
            return None
        return await run_in_threadpool(self.limits.take_turn, tenant_id)

    async def _give_back(self, tenant_id: str, place: str | None) -> None:
        if place is not None:
            await run_in_threadpool(self.limits.give_back_turn, tenant_id, place)

    def _open(self, tenant_id: str, session_id: str, key: str | None, content: str) -> tuple:
        """Thread pool: (session, committed turn or None, held lock or None)."""
        session = self.store.get_session(tenant_id, session_id, False)
        if key:
            done = self.store.find_turn(tenant_id, session_id, key, content)
            if done is not None:
                return session, done, None
        lock = self.store.session_lock(tenant_id, session_id, self.settings.lock_wait_s)
        try:
            lock.__enter__()
        except Busy as exc:
            self.metrics.turns.labels("busy").inc()
            raise SessionBusy(f"session {session_id} is busy with another turn") from exc
        return session, None, lock

    def _load(self, session: SessionRec, req: MessageCreate) -> tuple:
        """Thread pool: the state (bytes and tensors), the bank views when memory is on,
        and whether the session's user already holds the memory limit."""
        loaded = self.store.load_state(session.tenant_id, session.id)
        state, stale = load_or_none(self.runtime, loaded)  # stale: another model's state
        banks, full = None, False
        if req.use_memory and self.memory is not None and self.memory.enabled:
            banks = self.memory.views(session)
            full = banks is not None and not self.limits.turn_may_write(session)
        return loaded, state, banks, full, stale

    async def _rebuilt(self, session: SessionRec, loaded: LoadedState) -> tuple:
        """Another model's state: the history re-prefilled on this one (see
        :mod:`memsvc.services.rebuild`); returns (loaded as if this model wrote it, state,
        tokens fed). Saved by the turn's commit like any new state."""
        rebuilt = await rebuild(self.store, self.runtime, self.scheduler, session)
        log.info("session %s: state rebuilt for this model (%d tokens)", session.id, rebuilt.tokens)
        data = None
        if rebuilt.state is not None:
            data = await run_in_threadpool(self.runtime.state_to_bytes, rebuilt.state)
        fp = self.runtime.fingerprint
        loaded = replace(loaded, data=data, position=rebuilt.tokens, fingerprint=fp)
        return loaded, rebuilt.state, rebuilt.tokens

    async def events(self, turn: Turn) -> AsyncIterator[object]:
        """Text events, then the committed :class:`TurnOut` (or an exception)."""
        if turn.result is not None:
            yield turn.result
            return
        while True:
            event = await turn.queue.get()
            yield event
            if isinstance(event, TurnOut | BaseException):
                return

    async def complete(self, turn: Turn) -> TurnOut:
        """Wait for the whole turn (non-streaming requests)."""
        async for event in self.events(turn):
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, TurnOut):
                return event
        raise Unavailable("turn ended without a result")

    # ------------------------------------------------------------------ the turn
    async def _run(self, turn: Turn, held, session: SessionRec, req, max_new: int) -> None:
        accepted = time.perf_counter()
        lock, place = held
        try:
            try:
                result: TurnOut | Exception = await self._run_locked(
                    turn, session, req, max_new, accepted
                )
                self.metrics.turns.labels("ok").inc()
            finally:
                # released before the client hears the turn ended: a client that sends its
                # next turn the moment this one returns must find the session free, not 409
                await run_in_threadpool(_release_quietly, lock, session.id)
                await self._give_back(session.tenant_id, place)
        except BaseException as exc:  # the client gets it as an event, never a lost turn
            self.metrics.turns.labels("error").inc()
            log.warning("turn on session %s failed: %r", session.id, exc)
            result = _as_api_error(exc)
        await turn.queue.put(result)

    async def _run_locked(self, turn, session, req, max_new, accepted) -> TurnOut:
        if req.idempotency_key:  # committed while we waited for the lock: replay, not redo
            done = await run_in_threadpool(
                self.store.find_turn,
                session.tenant_id,
                session.id,
                req.idempotency_key,
                req.content,
            )
            if done is not None:
                return self._replayed(session, *done)
        loaded, state, banks, full, stale = await run_in_threadpool(self._load, session, req)
        loaded: LoadedState
        rebuilt = None  # tokens re-prefilled when the state was another model's
        if stale:
            loaded, state, rebuilt = await self._rebuilt(session, loaded)
        passages = await self.prompt.retrieve(session, req)
        prep = Prepared(banks=banks, memory_full=full)
        if self.notes is not None and req.use_memory:  # memories as text: read, forget
            prep.notes, prep.memory_full = await run_in_threadpool(self._note_turn, session, req)
        events: asyncio.Queue = asyncio.Queue()
        gen = await self.prompt.request(
            session, loaded, state, passages, req, max_new, prep, events
        )
        gen.started = accepted
        forget = parse_forget(req.content) if self._remembers(session, prep) else None
        if forget is not None and not prep.banks:  # text memories: forgotten by _note_turn
            gen.forced = self._said(confirmation(forget, prep.notes.forgotten_lines))
        if forget is None or not prep.banks:
            result = await self.scheduler.run(gen)
        else:  # the forget removes slots before the reply decodes; it is not itself a memory
            result = await self.scheduler.run(gen.prefill)
            prep.forgotten, prep.forgotten_memories = await run_in_threadpool(
                self.memory.forget_request, prep.banks, forget, result.capture, prep.user_end
            )
            gen.prefill = PrefillRequest([], result.state, gen.prefill.memory)
            gen.logits = result.logits
            gen.forced = await self._confirmation(session, forget, prep.forgotten_memories)
            await self.scheduler.run(gen)
        if prep.banks and forget is None:
            prep.capture = TurnCapture(
                hidden=result.capture, span=(1, prep.user_end), offset=prep.offset
            )
        done = await self._relay(events, turn.queue)

        def finish() -> tuple[bytes, int]:  # thread pool: tensors into the views, no model
            return self.runtime.state_to_bytes(done.state), self._write_memory(prep, session, req)

        state_bytes, writes = await run_in_threadpool(finish)
        banks = prep.banks.values() if prep.banks else ()
        commit = TurnCommit(
            tenant_id=session.tenant_id,
            session_id=session.id,
            expected_version=loaded.version,
            user_content=req.content,
            assistant_content=done.text,
            idempotency_key=req.idempotency_key,
            state=state_bytes,
            fingerprint=self.runtime.fingerprint,
            position=int(done.state.position.reshape(-1)[0]),
            user_tokens=prep.prompt_tokens,
            assistant_tokens=len(done.token_ids),
            slot_changes=tuple(view.changes() for view in banks),
            text_memories=prep.notes.changes(session.tenant_id) if prep.notes else None,
        )
        user_msg, bot_msg = await run_in_threadpool(self.store.commit_turn, commit)
        cached = loaded.position if loaded.data and rebuilt is None else 0
        self._count_tokens(session.tenant_id, prep, done, cached)
        usage = Usage(
            prompt_tokens=prep.prompt_tokens,
            completion_tokens=len(done.token_ids),
            total_tokens=prep.prompt_tokens + len(done.token_ids),
            cached_tokens=cached,
            state_source=loaded.tier if loaded.data else "new",
            passage_tokens=prep.passage_tokens,
            snapshot_hits=prep.snapshot_hits,
            snapshot_misses=prep.snapshot_misses,
            memory_writes=writes,
            memory_forgotten=len(prep.forgotten),
            forgotten_memories=prep.forgotten_memories
            or list(getattr(prep.notes, "forgotten", ())),
            noted_memories=list(getattr(prep.notes, "read", ())),
            memory_enabled=self.memory_enabled,
            memory_limited=prep.memory_full,
            state_rebuilt=rebuilt is not None,
            rebuilt_tokens=rebuilt or 0,
        )
        return TurnOut(
            session_id=session.id,
            message=_out(bot_msg),
            user_message=_out(user_msg),
            finish_reason=done.finish_reason,
            usage=usage,
            passages=prep.passages,
        )

    @property
    def memory_enabled(self) -> bool:
        """Whether turns read and write memory (slots, or text notes without layers)."""
        return self.memory is not None and (self.memory.enabled or self.notes is not None)

    def _remembers(self, session: SessionRec, prep: Prepared) -> bool:
        """Whether this turn reads and writes a memory (slot banks, or text memories of
        a namespace), so that a forget request in it is carried out and confirmed."""
        return bool(prep.banks) or (
            prep.notes is not None and self.notes.namespace(session) is not None
        )

    async def _confirmation(self, session: SessionRec, forget, ids) -> tuple[int, ...]:
        """The forget request's reply as tokens: the removed memories quoted back
        (:func:`memsvc.services.forget.confirmation`), read before the commit retires them."""
        texts = await run_in_threadpool(self._memory_texts, session.tenant_id, list(ids))
        return self._said(confirmation(forget, texts))

    def _said(self, text: str) -> tuple[int, ...]:
        """A reply the service writes, as the tokens the engine feeds (``forced``)."""
        return tuple(self.runtime.tokenizer.encode(text))

    def _memory_texts(self, tenant_id: str, ids: list[str]) -> list[str]:
        """Thread pool: the texts of memories ``ids``, in that order (those with text)."""
        if not ids:
            return []
        texts = {m.id: m.text for m in self.store.get_memories(tenant_id, ids)}
        return [texts[i] for i in ids if texts.get(i)]

    def _note_turn(self, session: SessionRec, req: MessageCreate) -> tuple[Any, bool]:
        """Thread pool: the turn's text memories (:mod:`memsvc.services.memory_notes`)
        and whether the user holds the memory limit."""
        may_write = self.limits.turn_may_write(session)
        return self.notes.turn(session, req.content, may_write), not may_write

    def _write_memory(self, prep: Prepared, session: SessionRec, req: MessageCreate) -> int:
        """Thread pool: the user message's slots into the turn's bank views (tensors
        only; the commit writes them). A failure only logs: the reply still commits."""
        if prep.notes is not None:
            return int(prep.notes.new is not None)
        if not prep.banks or prep.memory_full:
            return 0
        try:
            return self.memory.write_turn(prep.banks, prep.capture, session.id, req.content)
        except Exception:
            log.exception("memory write of a turn on session %s failed", session.id)
            return 0

    async def _relay(self, events: asyncio.Queue, out: asyncio.Queue) -> DoneEvent:
        """Forward text events to the turn's queue until the decode is done."""
        deadline = self.settings.turn_timeout_s
        while True:
            event = await asyncio.wait_for(events.get(), timeout=deadline)
            if isinstance(event, TokenEvent):
                await out.put(event)
            elif isinstance(event, DoneEvent):
                return event
            elif isinstance(event, ErrorEvent):
                raise Unavailable("generation failed; the turn was not saved") from event.error

    def _count_tokens(self, tenant_id: str, prep: Prepared, done, cached: int) -> None:
        """Process metrics of a committed turn (the durable figures are the messages')."""
        m = self.metrics
        m.tokens.labels("in").inc(prep.prompt_tokens)
        m.tokens.labels("out").inc(len(done.token_ids))
        m.tokens.labels("cached").inc(cached)
        m.tenant_tokens.labels(tenant_id, "in").inc(prep.prompt_tokens)
        m.tenant_tokens.labels(tenant_id, "out").inc(len(done.token_ids))
        m.tenant_turns.labels(tenant_id).inc()

    def _replayed(self, session: SessionRec, user_msg, bot_msg) -> TurnOut:
        """The stored answer of an already committed turn (idempotent retry)."""
        usage = Usage(
            prompt_tokens=0,
            completion_tokens=0,
            total_tokens=0,
            cached_tokens=0,
            state_source="replay",
            memory_enabled=self.memory_enabled,
        )
        return TurnOut(
            session_id=session.id,
            message=_out(bot_msg),
            user_message=_out(user_msg),
            finish_reason="stop",
            usage=usage,
            replayed=True,
        )


def _release_quietly(lock: Any, session_id: str) -> None:
    """Release the session's lock; a failure only logs, since the lease expires on its own."""
    try:
        lock.__exit__(None, None, None)
    except Exception:
        log.exception("releasing the lock of session %s failed; it will expire", session_id)


def _as_api_error(exc: BaseException) -> Exception:
    """Known failures as API errors: a damaged state 409 (another model's state is rebuilt,
    never refused), a timeout 503; others unchanged."""
    from sqlalchemy.exc import DataError

    from retnet_core.state import StateError

    if isinstance(exc, DataError):
        return BadRequest("a value of this turn cannot be stored; nothing was saved")
    if isinstance(exc, StateError):
        return Conflict(f"the session's saved state is damaged and cannot be used: {exc}")
    if isinstance(exc, TimeoutError):
        return Unavailable("generation timed out; the turn was not saved")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def _out(m: Any) -> MessageOut:
    return MessageOut(
        id=str(m.id),
        role=m.role,
        content=m.content,
        created_at=m.created_at,
        token_count=m.token_count,
    )
