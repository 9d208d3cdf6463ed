"""Keyed memories ("items"): a JSON document at (user, collection, key), a memory too.

A key-value client (memsvc's LangGraph store) addresses a memory by the user, a
collection (a path of names) and a key unique within them. The memory row carries the
document (``value``, canonical JSON) and, optionally, a text that semantic search reads
(and that may also be written as slots, elsewhere). A put replaces the document in place
(same memory id, ``written`` logged with cause "replaced").

Collections are stored as canonical JSON (``storage.memories.collection_column``), so a
collection *prefix* is a string prefix: ``["a", "b"]`` is under ``["a"]`` when its JSON
starts with ``["a", ``. That prefix goes into SQL ``LIKE`` with ``%``, ``_`` and the
escape character escaped: names are user input, and an unescaped ``%`` would match
other collections (LangGraph's Postgres store had exactly this leak).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import NotFound
from storage.memories import _event, collection_column
from storage.models import Memory, new_id, utcnow

LIKE_ESCAPE = "\\"


@dataclass(frozen=True)
class ItemInfo:
    id: str
    user_id: str
    collection: list[str]
    key: str
    value: dict | None
    text: str | None
    slots: int
    created_at: datetime
    updated_at: datetime


def like_escape(s: str) -> str:
    """``s`` matched literally by ``LIKE ... ESCAPE '\\'``."""
    for ch in (LIKE_ESCAPE, "%", "_"):
        s = s.replace(ch, LIKE_ESCAPE + ch)
    return s


def under_prefix(prefix: Sequence[str]):
    """SQL condition: the memory's collection equals ``prefix`` or lies below it."""
    if not prefix:
        return Memory.collection.is_not(None)
    exact = collection_column(prefix)
    below = like_escape(exact[:-1] + ", ") + "%"
    return (Memory.collection == exact) | Memory.collection.like(below, escape=LIKE_ESCAPE)


def _item(m: Memory) -> ItemInfo:
    return ItemInfo(
        id=m.id,
        user_id=m.user_id or "",
        collection=json.loads(m.collection or "[]"),
        key=m.key or "",
        value=None if m.value is None else json.loads(m.value),
        text=m.text,
        slots=int(m.slots),
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


def _live(tenant_id: str, user_id: str):
    return select(Memory).where(
        Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.deleted_at.is_(None)
    )


class MemoryItems:
    """Put / get / delete / scan of keyed memories; every query filters on the tenant."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _find(self, s, tenant_id, user_id, collection, key) -> Memory | None:
        q = _live(tenant_id, user_id).where(
            Memory.collection == collection_column(collection), Memory.key == key
        )
        return s.scalar(q)

    def put(
        self,
        tenant_id: str,
        user_id: str,
        collection: Sequence[str],
        key: str,
        value: dict,
        text: str | None,
    ) -> tuple[ItemInfo, bool, list[str]]:
        """Insert or replace; (the item, replaced, ids of memories whose old slots must go)."""
        doc = json.dumps(value, ensure_ascii=False, sort_keys=True)
        now = utcnow()
        span = (0, len(text or ""))
        for _ in range(2):  # a concurrent insert of the same key: the second try replaces it
            try:
                with self.db.write() as s:
                    m = self._find(s, tenant_id, user_id, collection, key)
                    stale: list[str] = []
                    if m is None:
                        m = Memory(
                            id=new_id(),
                            tenant_id=tenant_id,
                            user_id=user_id,
                            namespace=f"user:{user_id}",
                            collection=collection_column(collection),
                            key=key,
                            created_at=now,
                            gate=0.0,
                            slots=0,
                        )
                        s.add(m)
                        cause = "put"
                    else:
                        stale = [m.id] if m.slots else []
                        cause = "put: replaced"
                    m.value, m.text, m.updated_at = doc, text, now
                    m.span_start, m.span_end = span
                    s.flush()
                    _event(s, tenant_id, user_id, m.id, "written", cause)
                    return _item(m), cause != "put", stale
            except IntegrityError:
                continue
        raise RuntimeError("put lost two races for one key")  # pragma: no cover

    def get(self, tenant_id: str, user_id: str, collection: Sequence[str], key: str) -> ItemInfo:
        with self.db.read() as s:
            m = self._find(s, tenant_id, user_id, collection, key)
            if m is None:
                raise NotFound(f"no item {key!r} in that collection")
            return _item(m)

    def find_id(self, tenant_id: str, user_id: str, collection: Sequence[str], key: str) -> str:
        return self.get(tenant_id, user_id, collection, key).id

    def set_slots(self, tenant_id: str, memory_id: str, slots: int, gate: float) -> None:
        """Record the slots written for an item's text."""
        with self.db.write() as s:
            s.execute(
                update(Memory)
                .where(Memory.tenant_id == tenant_id, Memory.id == memory_id)
                .values(slots=Memory.slots + slots, gate=gate)
            )

    def scan(
        self, tenant_id: str, user_id: str, prefix: Sequence[str], limit: int
    ) -> list[ItemInfo]:
        """The user's items at or below collection ``prefix``, newest update first."""
        q = (
            _live(tenant_id, user_id)
            .where(under_prefix(prefix), Memory.key.is_not(None))
            .order_by(Memory.updated_at.desc(), Memory.id.desc())
            .limit(limit)
        )
        with self.db.read() as s:
            return [_item(m) for m in s.scalars(q)]

    def namespaces(
        self, tenant_id: str, user_id: str | None, prefix: Sequence[str], limit: int
    ) -> list[tuple[str, list[str]]]:
        """Distinct (user, collection) of the tenant's live items, narrowed by user and a
        literal collection prefix (the caller matches wildcards and suffixes exactly)."""
        q = select(Memory.user_id, Memory.collection).where(
            Memory.tenant_id == tenant_id,
            Memory.deleted_at.is_(None),
            Memory.key.is_not(None),
            under_prefix(prefix),
        )
        if user_id is not None:
            q = q.where(Memory.user_id == user_id)
        q = q.distinct().order_by(Memory.user_id, Memory.collection).limit(limit)
        with self.db.read() as s:
            return [(u, json.loads(c)) for u, c in s.execute(q).all()]
