"""Session manager: create, list, read, delete sessions; list messages; debug logits.

Every method takes the caller's tenant id and lets the store enforce ownership, so an
unknown id and another tenant's id both end as 404.
"""

from __future__ import annotations

from memsvc.config import Settings
from memsvc.engine.requests import PrefillRequest, Segment
from memsvc.engine.runtime import ModelRuntime, logits_digest
from memsvc.engine.scheduler import Scheduler
from memsvc.errors import NotFound, TooLarge
from memsvc.records import (
    LogitsOut,
    MessageList,
    MessageOut,
    SessionCreate,
    SessionList,
    SessionOut,
)
from memsvc.services.rebuild import load_or_none, rebuild
from memsvc.store import SessionRec, Store
from memsvc.threads import run_in_threadpool


def session_out(s: SessionRec) -> SessionOut:
    """Record → API schema."""
    return SessionOut(
        id=s.id,
        user_id=s.user_id,
        system_prompt=s.system_prompt,
        memory_scope=s.memory_scope,
        created_at=s.created_at,
        message_count=s.message_count,
        token_count=s.token_count,
        version=s.version,
        metadata=s.metadata,
    )


class SessionManager:
    """Thin access-checked operations on sessions."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: ModelRuntime,
        scheduler: Scheduler,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.scheduler = scheduler

    async def create(self, tenant_id: str, body: SessionCreate) -> SessionOut:
        """A new, empty session (its state is built on the first turn)."""
        if body.system_prompt and len(body.system_prompt) > self.settings.max_message_chars:
            raise TooLarge(f"system_prompt is longer than {self.settings.max_message_chars} chars")
        rec = await run_in_threadpool(
            self.store.create_session,
            tenant_id,
            body.user_id,
            body.system_prompt,
            body.memory_scope,
            body.metadata,
        )
        return session_out(rec)

    async def list(self, tenant_id: str, user_id: str | None, limit: int) -> SessionList:
        recs = await run_in_threadpool(self.store.list_sessions, tenant_id, user_id, limit)
        return SessionList(data=[session_out(r) for r in recs])

    async def get(self, tenant_id: str, session_id: str) -> SessionOut:
        return session_out(await run_in_threadpool(self.store.get_session, tenant_id, session_id))

    async def delete(self, tenant_id: str, session_id: str) -> None:
        """Erase messages, states and session-scoped slots (waits for a running turn)."""
        await run_in_threadpool(self.store.get_session, tenant_id, session_id, False)
        lock = self.store.session_lock(tenant_id, session_id, max(self.settings.lock_wait_s, 30.0))
        await run_in_threadpool(lock.__enter__)
        try:
            await run_in_threadpool(self.store.delete_session, tenant_id, session_id)
        finally:
            await run_in_threadpool(lock.__exit__, None, None, None)

    async def messages(self, tenant_id: str, session_id: str, limit: int) -> MessageList:
        recs = await run_in_threadpool(self.store.list_messages, tenant_id, session_id, limit)
        return MessageList(
            data=[
                MessageOut(
                    id=m.id,
                    role=m.role,
                    content=m.content,
                    created_at=m.created_at,
                    token_count=m.token_count,
                )
                for m in recs
            ]
        )

    async def next_logits(self, tenant_id: str, session_id: str, top: int) -> LogitsOut:
        """Logits after feeding ``<|assistant|>`` to a copy of the persisted state."""
        session = await run_in_threadpool(self.store.get_session, tenant_id, session_id, False)
        loaded = await run_in_threadpool(self.store.load_state, tenant_id, session_id)
        if loaded.data is None:
            raise NotFound(f"session {session_id} has no state yet (no turn was taken)")
        rt = self.runtime
        state, stale = await run_in_threadpool(load_or_none, rt, loaded)
        if stale:  # another model's state: probe a rebuilt one (saved by the next turn)
            state = (await rebuild(self.store, rt, self.scheduler, session)).state
        probe = Segment(rt.tokenizer.generation_prompt(), alone=True)
        logits = (await self.scheduler.run(PrefillRequest([probe], state))).logits
        values, ids = logits.topk(min(top, logits.numel()))
        return LogitsOut(
            session_id=session.id,
            version=loaded.version,
            position=loaded.position,
            top=[(int(i), float(v)) for i, v in zip(ids, values, strict=True)],
            logits_sha256=logits_digest(logits),
        )
