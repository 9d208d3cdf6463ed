"""A tenant's usage, computed from the rows it owns with SQL aggregates.

Nothing here is a running counter: every figure is read from the source of truth, so
it is the same on every replica and after a restart. Token counts come from the
messages' ``meta["tokens"]`` (written by each turn's commit: a user message carries the
turn's prompt tokens, an assistant message its completion tokens). Figures are of what
the tenant holds now: deleting a session or erasing a user also removes its messages
from the counts.

Stored bytes are approximate (``length()`` of each text and binary column; characters,
not bytes, for text on PostgreSQL), without indexes, row headers or TOAST compression:

    stored = states + messages + slots + memories + documents (passages) + snapshots

with ``states = Σ length(blob) + Σ length(chunk data)`` (likewise for snapshots),
``messages = Σ length(content)``, ``slots = Σ length(key) + length(value)``,
``memories = Σ length(text) + length(value)``, ``documents = Σ length(text) +
length(embedding)`` over passages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.errors import NotFound
from storage.models import (
    ChatSession,
    Document,
    Memory,
    MemorySlot,
    Message,
    Passage,
    SessionState,
    SnapshotChunk,
    StateChunk,
    StateSnapshot,
    Tenant,
)


@dataclass(frozen=True)
class TenantUsage:
    """Counts of one tenant; ``stored_bytes`` maps a kind of data to its bytes."""

    tenant_id: str
    sessions: int
    turns: int
    messages: int
    tokens_in: int
    tokens_out: int
    memories: int
    slots: int
    documents: int
    passages: int
    stored_bytes: dict[str, int] = field(default_factory=dict)


def _len(column) -> object:  # type: ignore[no-untyped-def]
    """``coalesce(sum(length(column)), 0)`` as an integer."""
    return func.coalesce(func.sum(func.length(column)), 0)


def _one(s: Session, stmt) -> tuple:  # type: ignore[no-untyped-def]
    row = s.execute(stmt).one()
    return tuple(int(v or 0) for v in row)


def _messages(s: Session, tenant_id: str) -> tuple[int, int, int, int, int]:
    """(messages, turns, tokens in, tokens out, content length) of the tenant."""
    tokens = func.coalesce(Message.meta["tokens"].as_integer(), 0)
    is_reply = Message.role == "assistant"
    stmt = select(
        func.count(),
        func.coalesce(func.sum(case((is_reply, 1), else_=0)), 0),
        func.coalesce(func.sum(case((is_reply, 0), else_=tokens)), 0),
        func.coalesce(func.sum(case((is_reply, tokens), else_=0)), 0),
        _len(Message.content),
    ).where(Message.tenant_id == tenant_id)
    return _one(s, stmt)  # type: ignore[return-value]


def _by_tenant(s: Session, tenant_id: str, model, *exprs) -> tuple:  # type: ignore[no-untyped-def]
    return _one(s, select(*exprs).where(model.tenant_id == tenant_id))


def tenant_usage(s: Session, tenant_id: str) -> TenantUsage:
    """Every figure of :class:`TenantUsage` in a handful of aggregate queries."""
    n_msg, turns, t_in, t_out, msg_bytes = _messages(s, tenant_id)
    (n_sessions,) = _by_tenant(s, tenant_id, ChatSession, func.count())
    (state_bytes,) = _by_tenant(s, tenant_id, SessionState, _len(SessionState.blob))
    (chunk_bytes,) = _by_tenant(s, tenant_id, StateChunk, _len(StateChunk.data))
    n_slots, slot_bytes = _by_tenant(
        s,
        tenant_id,
        MemorySlot,
        func.count(),
        func.coalesce(func.sum(func.length(MemorySlot.key) + func.length(MemorySlot.value)), 0),
    )
    live = Memory.deleted_at.is_(None)
    n_mem, mem_text, mem_value = _one(
        s,
        select(func.count(), _len(Memory.text), _len(Memory.value)).where(
            Memory.tenant_id == tenant_id, live
        ),
    )
    (n_docs,) = _by_tenant(s, tenant_id, Document, func.count())
    n_pass, pass_text, pass_emb = _by_tenant(
        s, tenant_id, Passage, func.count(), _len(Passage.text), _len(Passage.embedding)
    )
    (snap_bytes,) = _by_tenant(s, tenant_id, StateSnapshot, _len(StateSnapshot.blob))
    (snap_chunks,) = _by_tenant(s, tenant_id, SnapshotChunk, _len(SnapshotChunk.data))
    stored = {
        "states": state_bytes + chunk_bytes,
        "messages": msg_bytes,
        "slots": slot_bytes,
        "memories": mem_text + mem_value,
        "documents": pass_text + pass_emb,
        "snapshots": snap_bytes + snap_chunks,
    }
    stored["total"] = sum(stored.values())
    return TenantUsage(
        tenant_id=tenant_id,
        sessions=n_sessions,
        turns=turns,
        messages=n_msg,
        tokens_in=t_in,
        tokens_out=t_out,
        memories=n_mem,
        slots=n_slots,
        documents=n_docs,
        passages=n_pass,
        stored_bytes=stored,
    )


class UsageManager:
    """Usage of a tenant, and the live memory count that the per-user limit reads."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def usage(self, tenant_id: str) -> TenantUsage:
        """The tenant's :class:`TenantUsage`; :class:`NotFound` for an unknown tenant."""
        with self.db.read() as s:
            if s.get(Tenant, tenant_id) is None:
                raise NotFound(f"tenant {tenant_id} not found")
            return tenant_usage(s, tenant_id)

    def user_memories(self, tenant_id: str, user_id: str) -> int:
        """Live (not deleted) memories of one user of the tenant."""
        with self.db.read() as s:
            stmt = select(func.count()).where(
                Memory.tenant_id == tenant_id,
                Memory.user_id == user_id,
                Memory.deleted_at.is_(None),
            )
            return int(s.scalar(stmt) or 0)


__all__ = ["TenantUsage", "UsageManager", "tenant_usage"]
