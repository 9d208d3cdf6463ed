"""Importing past turns into a session (``POST /v1/sessions/{id}/transcript``).

Each user/assistant pair is fed to the model as if it had happened: the user turn and
the assistant's reply are prefilled after the session's state (nothing is generated),
the pair and the new state are committed like a turn, and the user message is written to
memory through the Retention Layer's gate. The session's lock is held for the import.
"""

from __future__ import annotations

from typing import Any

from memsvc.errors import SessionBusy
from memsvc.records import TranscriptIn, TranscriptOut
from memsvc.services.memory import TurnCapture
from memsvc.store import Busy, TurnCommit
from memsvc.threads import run_in_threadpool


class TranscriptImporter:
    def __init__(self, settings: Any, store: Any, runtime: Any, scheduler: Any, memory: Any):
        self.settings, self.store, self.runtime = settings, store, runtime
        self.scheduler, self.memory = scheduler, memory

    async def run(self, tenant_id: str, session_id: str, body: TranscriptIn) -> TranscriptOut:
        session = await run_in_threadpool(self.store.get_session, tenant_id, session_id, False)
        lock = self.store.session_lock(tenant_id, session_id, self.settings.lock_wait_s)
        try:
            await run_in_threadpool(lock.__enter__)
        except Busy as exc:
            raise SessionBusy(f"session {session_id} is busy with another turn") from exc
        try:
            writes = 0
            for i in range(0, len(body.turns), 2):
                user, reply = body.turns[i].content, body.turns[i + 1].content
                writes += await self._pair(session, user, reply)
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
        )

    async def _pair(self, session, user_text: str, reply_text: str) -> int:
        """One pair fed and committed like a turn: its memory write into fresh bank views
        on the model thread, the slots and memory written by the pair's commit."""
        loaded = await run_in_threadpool(self.store.load_state, session.tenant_id, session.id)
        tok = self.runtime.tokenizer
        banks = None
        if self.memory is not None and self.memory.enabled:
            banks = await run_in_threadpool(self.memory.views, session)

        def feed() -> tuple[Any, int, int, int, int]:
            state = self.runtime.state_from_bytes(loaded.data) if loaded.data else None
            reads = banks if banks and any(len(b) for b in banks.values()) else None
            head: list[int] = []
            if state is None and session.system_prompt:
                head = tok.render_turn({"role": "system", "content": session.system_prompt})
                state = self.runtime.prefill(head, None, [len(head)], memory=reads).state
            user = tok.render_turn({"role": "user", "content": user_text})
            reply = tok.render_turn({"role": "assistant", "content": reply_text})
            offset = 0 if state is None else int(state.position.reshape(-1)[0])
            capture: dict = {}
            bounds = [len(user), len(user) + len(reply)]
            out = self.runtime.prefill(user + reply, state, bounds, memory=reads, capture=capture)
            data = self.runtime.state_to_bytes(out.state)
            position = int(out.state.position.reshape(-1)[0])
            cap = TurnCapture(hidden=capture, span=(1, len(user) - 1), offset=offset)
            writes = self.memory.write_turn(banks, cap, session.id, user_text) if banks else 0
            return data, writes, len(head) + len(user), position, len(reply)

        data, writes, user_tokens, position, reply_tokens = await self.scheduler.call(feed)
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
        )
        await run_in_threadpool(self.store.commit_turn, commit)
        return writes
