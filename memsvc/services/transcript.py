"""Importing past turns into a session (``POST /v1/sessions/{id}/transcript``).

Each user/assistant pair is fed to the model as if it had happened: the user turn and
the assistant's reply are prefilled after the session's state (nothing is generated),
the pair and the new state are committed like a turn, and the user message is written to
memory through the Retention Layer's gate. The session's lock is held for the import.
A turn's ``timestamp`` (when it happened) becomes its message's ``created_at``. A
session whose state another model wrote is first rebuilt from its stored messages
(:mod:`memsvc.services.rebuild`).
"""

from __future__ import annotations

from typing import Any

from memsvc.engine.requests import PrefillRequest, Segment
from memsvc.errors import SessionBusy
from memsvc.records import TranscriptIn, TranscriptOut, TranscriptTurn
from memsvc.services.memory import TurnCapture
from memsvc.services.rebuild import load_or_none, rebuild
from memsvc.store import Busy, TextMemories, TurnCommit
from memsvc.threads import run_in_threadpool


class TranscriptImporter:
    def __init__(
        self,
        settings: Any,
        store: Any,
        runtime: Any,
        scheduler: Any,
        memory: Any,
        limits: Any = None,
        notes: Any = None,
    ):
        self.settings, self.store, self.runtime = settings, store, runtime
        self.scheduler, self.memory, self.limits = scheduler, memory, limits
        self.notes = notes  # memsvc.services.memory_notes.NoteMemory: text memories

    async def run(self, tenant_id: str, session_id: str, body: TranscriptIn) -> TranscriptOut:
        session = await run_in_threadpool(self.store.get_session, tenant_id, session_id, False)
        lock = self.store.session_lock(tenant_id, session_id, self.settings.lock_wait_s)
        try:
            await run_in_threadpool(lock.__enter__)
        except Busy as exc:
            raise SessionBusy(f"session {session_id} is busy with another turn") from exc
        try:
            writes, rebuilt = 0, False
            for i in range(0, len(body.turns), 2):
                n, stale = await self._pair(session, body.turns[i], body.turns[i + 1])
                writes, rebuilt = writes + n, rebuilt or stale
        finally:
            await run_in_threadpool(lock.__exit__, None, None, None)
        after = await run_in_threadpool(self.store.get_session, tenant_id, session_id, True)
        return TranscriptOut(
            session_id=session_id,
            turns_imported=len(body.turns) // 2,
            messages=len(body.turns),
            memory_writes=writes,
            version=after.version,
            token_count=after.token_count,
            state_rebuilt=rebuilt,
        )

    async def _pair(
        self, session, user_turn: TranscriptTurn, reply_turn: TranscriptTurn
    ) -> tuple[int, bool]:
        """One pair fed and committed like a turn: the engine prefills it (plain request),
        its memory write goes into fresh bank views on the thread pool, and the slots and
        memory are written by the pair's commit. Returns (memory writes, state rebuilt)."""
        user_text, reply_text = user_turn.content, reply_turn.content
        loaded = await run_in_threadpool(self.store.load_state, session.tenant_id, session.id)
        tok = self.runtime.tokenizer
        banks, may_write = None, True
        if self.memory is not None and self.memory.enabled:
            banks = await run_in_threadpool(self.memory.views, session)
        if (banks or self.notes) and self.limits is not None:  # at the limit: no new memory
            may_write = await run_in_threadpool(self.limits.turn_may_write, session)
        note = self.notes.pending(session, user_text) if self.notes and may_write else None
        state, stale = await run_in_threadpool(load_or_none, self.runtime, loaded)
        if stale:  # another model's state: its history re-prefilled on this one first
            state = (await rebuild(self.store, self.runtime, self.scheduler, session)).state
        reads = banks if banks and any(len(b) for b in banks.values()) else None
        offset = 0 if state is None else int(state.position.reshape(-1)[0])
        segments: list[Segment] = []
        head: list[int] = []
        if state is None and session.system_prompt:
            head = tok.render_turn({"role": "system", "content": session.system_prompt})
            segments.append(Segment(head, cuts=(len(head),), read_memory=reads is not None))
            offset = len(head)
        user = tok.render_turn({"role": "user", "content": user_text})
        reply = tok.render_turn({"role": "assistant", "content": reply_text})
        bounds = (len(user), len(user) + len(reply))
        segments.append(
            Segment(user + reply, cuts=bounds, read_memory=reads is not None, capture=True)
        )
        result = await self.scheduler.run(PrefillRequest(segments, state, reads))

        def finish() -> tuple[bytes, int]:  # thread pool: bytes, tensors into the views
            data = self.runtime.state_to_bytes(result.state)
            cap = TurnCapture(hidden=result.capture, span=(1, len(user) - 1), offset=offset)
            write = banks and may_write
            writes = self.memory.write_turn(banks, cap, session.id, user_text) if write else 0
            return data, writes

        data, writes = await run_in_threadpool(finish)
        writes += note is not None
        position = int(result.state.position.reshape(-1)[0])
        user_tokens, reply_tokens = len(head) + len(user), len(reply)
        commit = TurnCommit(
            tenant_id=session.tenant_id,
            session_id=session.id,
            expected_version=loaded.version,
            user_content=user_text,
            assistant_content=reply_text,
            idempotency_key=None,
            state=data,
            fingerprint=self.runtime.fingerprint,
            position=position,
            user_tokens=user_tokens,
            assistant_tokens=reply_tokens,
            slot_changes=tuple(view.changes() for view in (banks or {}).values()),
            text_memories=None
            if note is None
            else TextMemories(session.tenant_id, ((note, "transcript import"),)),
            user_created_at=user_turn.timestamp,
            assistant_created_at=reply_turn.timestamp,
        )
        await run_in_threadpool(self.store.commit_turn, commit)
        return writes, stale
