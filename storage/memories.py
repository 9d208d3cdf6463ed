"""Memories: what a user said (or text written explicitly), the unit users and operators see.

A memory is one written span. Its text is referenced (message id + character span), or,
for text without a message, stored once in the memory itself. Its token slots live in
slot banks (:mod:`storage.slots`) and reference it by ``memory_id`` with their own
character span. Every change is logged in ``memory_events`` (written, merged, evicted,
deleted) with its time and cause. Every query filters on the tenant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database
from storage.errors import Conflict, NotFound
from storage.models import Memory, MemoryEvent, MemorySlot, Message, new_id, utcnow

_CHUNK = 900


@dataclass(frozen=True)
class MemoryInfo:
    """A memory as its tenant sees it: resolved text, provenance, slots and reads."""

    id: str
    tenant_id: str
    user_id: str | None
    namespace: str
    session_id: str | None
    message_id: int | None
    span: tuple[int, int]
    text: str
    collection: list[str] | None
    key: str | None
    gate: float
    slots: int
    reads: int
    last_read_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True)
class MemoryEventInfo:
    id: int
    memory_id: str
    op: str  # written | merged | read | evicted | deleted
    cause: str
    at: datetime


@dataclass(frozen=True)
class NewMemory:
    """A memory about to be recorded (its slots are already written with ``id``)."""

    id: str
    tenant_id: str
    namespace: str
    user_id: str | None = None
    session_id: str | None = None
    message_id: int | None = None
    span: tuple[int, int] = (0, 0)
    text: str | None = None  # only for text without a message
    collection: Sequence[str] | None = None
    key: str | None = None


def new_memory_id() -> str:
    """A fresh memory id (slots are written with it before the memory row exists)."""
    return new_id()


def collection_column(collection: Sequence[str] | None) -> str | None:
    """The stored form of a collection path: canonical JSON, so equal paths compare equal."""
    return None if collection is None else json.dumps(list(collection), ensure_ascii=False)


def _event(s: Session, tenant_id: str, user_id: str | None, memory_id: str, op: str, cause: str):
    s.add(
        MemoryEvent(
            tenant_id=tenant_id,
            user_id=user_id,
            memory_id=memory_id,
            op=op,
            cause=cause[:200],
            at=utcnow(),
        )
    )


def slots_removed(s: Session, tenant_id: str, per_memory: dict[str, int], cause: str) -> None:
    """Inside a slot delete: count the memories' slots down and log one event each."""
    if not per_memory:
        return
    rows = s.execute(
        select(Memory.id, Memory.user_id).where(
            Memory.tenant_id == tenant_id, Memory.id.in_(sorted(per_memory))
        )
    ).all()
    for memory_id, user_id in rows:
        n = per_memory[memory_id]
        s.execute(update(Memory).where(Memory.id == memory_id).values(slots=Memory.slots - n))
        _event(s, tenant_id, user_id, memory_id, "evicted", f"{cause}: {n} slot(s)")


def _source():
    return func.coalesce(Memory.text, Message.content)


def _base(tenant_id: str):
    reads = (
        select(func.coalesce(func.sum(MemorySlot.reads), 0))
        .where(MemorySlot.memory_id == Memory.id)
        .scalar_subquery()
    )
    last = (
        select(func.max(MemorySlot.last_read_at))
        .where(MemorySlot.memory_id == Memory.id)
        .scalar_subquery()
    )
    return (
        select(Memory, _source(), reads, last)
        .outerjoin(Message, Message.id == Memory.message_id)
        .where(Memory.tenant_id == tenant_id)
    )


def _info(m: Memory, source: str | None, reads: int, last: datetime | None) -> MemoryInfo:
    text = "" if source is None else source[m.span_start : m.span_end]
    return MemoryInfo(
        id=m.id,
        tenant_id=m.tenant_id,
        user_id=m.user_id,
        namespace=m.namespace,
        session_id=m.session_id,
        message_id=m.message_id,
        span=(m.span_start, m.span_end),
        text=text,
        collection=None if m.collection is None else json.loads(m.collection),
        key=m.key,
        gate=float(m.gate),
        slots=int(m.slots),
        reads=int(reads or 0),
        last_read_at=last,
        created_at=m.created_at,
        updated_at=m.updated_at,
        deleted_at=m.deleted_at,
    )


class MemoryManager:
    """Memory rows and their change log (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self, new: NewMemory, slot_ids: Sequence[int], gate: float, cause: str
    ) -> MemoryInfo:
        """Insert the memory of already written slots and log ``written``; one transaction.

        The slots carry their own spans from their insert (no update: on PostgreSQL an
        update would leave a dead copy of every slot row). :class:`Conflict` when
        (user, collection, key) is taken.
        """
        now = utcnow()
        try:
            with self.db.write() as s:
                s.add(
                    Memory(
                        id=new.id,
                        tenant_id=new.tenant_id,
                        user_id=new.user_id,
                        namespace=new.namespace,
                        session_id=new.session_id,
                        message_id=new.message_id,
                        span_start=new.span[0],
                        span_end=new.span[1],
                        text=new.text,
                        collection=collection_column(new.collection),
                        key=new.key,
                        gate=float(gate),
                        slots=len(slot_ids),
                        created_at=now,
                        updated_at=now,
                    )
                )
                _event(s, new.tenant_id, new.user_id, new.id, "written", cause)
        except IntegrityError:
            raise Conflict("a memory with this collection and key exists") from None
        return self.get(new.tenant_id, new.id)

    def merged(self, tenant_id: str, memory_id: str, cause: str) -> MemoryInfo:
        """Log a write that merged into an existing memory (a duplicate)."""
        with self.db.write() as s:
            m = s.scalar(
                select(Memory).where(Memory.tenant_id == tenant_id, Memory.id == memory_id)
            )
            if m is None:
                raise NotFound(f"memory {memory_id} not found")
            m.updated_at = utcnow()
            _event(s, tenant_id, m.user_id, memory_id, "merged", cause)
        return self.get(tenant_id, memory_id)

    def get(self, tenant_id: str, memory_id: str, *, deleted: bool = False) -> MemoryInfo:
        """One memory of the tenant (live unless ``deleted``), or :class:`NotFound`."""
        q = _base(tenant_id).where(Memory.id == memory_id)
        if not deleted:
            q = q.where(Memory.deleted_at.is_(None))
        with self.db.read() as s:
            row = s.execute(q).first()
        if row is None:
            raise NotFound(f"memory {memory_id} not found")
        return _info(*row)

    def get_many(self, tenant_id: str, memory_ids: Sequence[str]) -> list[MemoryInfo]:
        """The live memories of the tenant among ``memory_ids`` (unknown ids skipped), in
        one read."""
        if not memory_ids:
            return []
        q = _base(tenant_id).where(
            Memory.id.in_(sorted(set(memory_ids))), Memory.deleted_at.is_(None)
        )
        with self.db.read() as s:
            return [_info(*row) for row in s.execute(q.order_by(Memory.id)).all()]

    def list(
        self,
        tenant_id: str,
        user_id: str,
        *,
        session_id: str | None = None,
        since: datetime | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[MemoryInfo]:
        """The user's live memories, newest first (ties: id)."""
        q = _base(tenant_id).where(Memory.user_id == user_id, Memory.deleted_at.is_(None))
        if session_id is not None:
            q = q.where(Memory.session_id == session_id)
        if since is not None:
            q = q.where(Memory.created_at >= since)
        if ids is not None:
            q = q.where(Memory.id.in_(list(ids)))
        q = q.order_by(Memory.created_at.desc(), Memory.id.desc()).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.db.read() as s:
            return [_info(*row) for row in s.execute(q).all()]

    def find_text(self, tenant_id: str, namespace: str, text: str) -> str | None:
        """A live memory of the namespace whose whole text equals ``text`` (a duplicate)."""
        whole_message = and_(
            Memory.message_id.is_not(None),
            Message.content == text,
            Memory.span_start == 0,
            Memory.span_end == len(text),
        )
        q = (
            select(Memory.id)
            .outerjoin(Message, Message.id == Memory.message_id)
            .where(Memory.tenant_id == tenant_id, Memory.namespace == namespace)
            .where(Memory.deleted_at.is_(None), or_(Memory.text == text, whole_message))
            .order_by(Memory.created_at)
            .limit(1)
        )
        with self.db.read() as s:
            return s.scalar(q)

    def search_text(self, tenant_id: str, namespace: str, needle: str) -> list[str]:
        """Ids of the namespace's live memories whose text contains ``needle`` (any case)."""
        with self.db.read() as s:
            rows = s.execute(
                _base(tenant_id).where(Memory.namespace == namespace, Memory.deleted_at.is_(None))
            ).all()
        low = needle.lower()
        return [m.id for m, source, *_ in rows if low in _info(m, source, 0, None).text.lower()]

    def slot_ids(self, tenant_id: str, memory_id: str) -> list[int]:
        """The memory's live slots (all layers), ascending id."""
        with self.db.read() as s:
            return list(
                s.scalars(
                    select(MemorySlot.id)
                    .where(MemorySlot.tenant_id == tenant_id, MemorySlot.memory_id == memory_id)
                    .order_by(MemorySlot.id)
                ).all()
            )

    def memory_of_slots(self, tenant_id: str, slot_ids: Sequence[int]) -> str | None:
        """The (live) memory the first of ``slot_ids`` that has one belongs to."""
        with self.db.read() as s:
            return s.scalar(
                select(Memory.id)
                .join(MemorySlot, MemorySlot.memory_id == Memory.id)
                .where(MemorySlot.tenant_id == tenant_id, MemorySlot.id.in_(list(slot_ids)))
                .where(Memory.deleted_at.is_(None))
                .order_by(MemorySlot.id)
                .limit(1)
            )

    def retire_empty(self, tenant_id: str, memory_ids: Sequence[str], cause: str) -> int:
        """Delete (tombstone) those of ``memory_ids`` that have no slot left."""
        n = 0
        for memory_id in memory_ids:
            with self.db.read() as s:
                left = s.scalar(
                    select(func.count(MemorySlot.id)).where(
                        MemorySlot.tenant_id == tenant_id, MemorySlot.memory_id == memory_id
                    )
                )
            if not left:
                try:
                    self.mark_deleted(tenant_id, memory_id, cause)
                    n += 1
                except NotFound:
                    pass
        return n

    def mark_deleted(self, tenant_id: str, memory_id: str, cause: str) -> None:
        """Tombstone the memory: its own text is erased, the row stays for the change log."""
        with self.db.write() as s:
            m = s.scalar(
                select(Memory).where(
                    Memory.tenant_id == tenant_id,
                    Memory.id == memory_id,
                    Memory.deleted_at.is_(None),
                )
            )
            if m is None:
                raise NotFound(f"memory {memory_id} not found")
            now = utcnow()
            m.deleted_at, m.updated_at, m.text, m.key = now, now, None, None
            m.value = None  # a keyed memory's document goes with its text
            m.span_start = m.span_end = 0
            _event(s, tenant_id, m.user_id, memory_id, "deleted", cause)

    def history(
        self,
        tenant_id: str,
        user_id: str,
        *,
        memory_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[MemoryEventInfo]:
        """The user's change log, newest first."""
        q = select(MemoryEvent).where(
            MemoryEvent.tenant_id == tenant_id, MemoryEvent.user_id == user_id
        )
        if memory_id is not None:
            q = q.where(MemoryEvent.memory_id == memory_id)
        q = q.order_by(MemoryEvent.id.desc()).limit(limit).offset(offset)
        with self.db.read() as s:
            return [MemoryEventInfo(e.id, e.memory_id, e.op, e.cause, e.at) for e in s.scalars(q)]

    def memory_events(self, tenant_id: str, memory_id: str) -> list[MemoryEventInfo]:
        """One memory's change log, oldest first."""
        q = (
            select(MemoryEvent)
            .where(MemoryEvent.tenant_id == tenant_id, MemoryEvent.memory_id == memory_id)
            .order_by(MemoryEvent.id)
        )
        with self.db.read() as s:
            return [MemoryEventInfo(e.id, e.memory_id, e.op, e.cause, e.at) for e in s.scalars(q)]

    def erase_user(self, tenant_id: str, user_id: str) -> int:
        """Delete the user's memory rows and change log (their slots go first, elsewhere)."""
        with self.db.write() as s:
            n = s.execute(
                delete(Memory).where(Memory.tenant_id == tenant_id, Memory.user_id == user_id)
            ).rowcount
            s.execute(
                delete(MemoryEvent).where(
                    MemoryEvent.tenant_id == tenant_id, MemoryEvent.user_id == user_id
                )
            )
        return int(n or 0)
