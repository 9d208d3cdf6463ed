"""Memories written with their slots: the memory half of a turn's (or a write's) commit.

A write through the Retention Layer happens on the model thread, in bank views
(:mod:`storage.slot_view`), with no I/O. What it means for memories is recorded beside
the slot changes in a :class:`MemoryChanges` (on one of the write's
:class:`~storage.slot_view.BankChanges`) and committed in the SAME transaction as the
slots, by :func:`apply_memory_changes`:

- ``new``: a memory whose slots were appended. Its row and its ``written`` event are
  inserted before the slot rows; ``slots`` = the appended slots that reference it, over
  every bank of the commit. A ``message_id`` of ``TURN_USER_MESSAGE`` is the user message
  committed with the turn, as for slots. None appended (all evicted again): no row.
- ``merges``: a write whose slots were blended into existing slots: a ``merged`` event
  for the (live) memory of the first of them; the memory's id is filled into
  ``merged_into`` for the caller. Skips leave nothing.
- ``retire``: memories some of whose slots this commit removed (chat forget): those left
  without a slot are tombstoned (``deleted``), after every bank's removals.
- ``texts``: memories kept as text only, with no slots: a model without memory layers
  reads them as a note (:mod:`memsvc.services.memory_notes`). Their rows are inserted
  with ``slots = 0``; ``retire`` tombstones them like emptied ones.

Reads need no :class:`MemoryChanges`: the banks' read counts already say which slots the
turn read, and :func:`log_reads` adds one ``read`` event per live memory behind them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import Conflict
from storage.memories import _event, collection_column
from storage.models import Memory, MemorySlot, utcnow

#: provenance / pending memory ``message_id`` meaning "the user message this turn commits"
TURN_USER_MESSAGE = -1


@dataclass
class MemoryChanges:
    """What one write did to memories (see the module docstring).

    ``new`` holds (memory, gate, cause) with memory any object with the fields of
    :class:`storage.memories.NewMemory`; ``merges`` holds (blended slot ids, cause).
    """

    tenant_id: str
    new: list[tuple[Any, float, str]] = field(default_factory=list)
    merges: list[tuple[list[int], str]] = field(default_factory=list)
    retire: dict[str, str] = field(default_factory=dict)  # memory id -> cause
    merged_into: list[str | None] = field(default_factory=list)  # filled by the commit
    texts: list[tuple[Any, str]] = field(default_factory=list)  # (memory, cause): no slots


def insert_new(s: Session, changes: Sequence, adds: Sequence, user_message_id: int | None) -> None:
    """The new memories' rows and ``written`` events (before their slot rows).

    ``adds`` are every bank's appended (key, value, gate, provenance) of the commit.
    """
    counts: dict[str, int] = {}
    for *_, prov in adds:
        memory_id = getattr(prov, "memory_id", None)
        if memory_id is not None:
            counts[memory_id] = counts.get(memory_id, 0) + 1
    now = utcnow()
    for mc in changes:
        slotted = [(new, gate, cause, counts.get(new.id, 0)) for new, gate, cause in mc.new]
        # a write whose slots were all evicted again within it leaves no memory
        rows = [row for row in slotted if row[3]] + [
            (new, 1.0, cause, 0) for new, cause in mc.texts
        ]
        for new, gate, cause, slots in rows:
            s.add(_memory_row(new, gate, slots, user_message_id, now))
            _event(s, new.tenant_id, new.user_id, new.id, "written", cause)
    try:
        s.flush()
    except IntegrityError:
        raise Conflict("a memory with this collection and key exists") from None


def _memory_row(new: Any, gate: float, slots: int, user_message_id: int | None, now) -> Memory:
    """The row of pending memory ``new`` (its turn's user message id resolved)."""
    message_id = user_message_id if new.message_id == TURN_USER_MESSAGE else new.message_id
    return Memory(
        id=new.id,
        tenant_id=new.tenant_id,
        user_id=new.user_id,
        namespace=new.namespace,
        session_id=new.session_id,
        message_id=message_id,
        span_start=new.span[0],
        span_end=new.span[1],
        text=new.text,
        collection=collection_column(new.collection),
        key=new.key,
        gate=float(gate),
        slots=slots,
        created_at=now,
        updated_at=now,
    )


def log_merges(s: Session, changes: Sequence) -> None:
    """A ``merged`` event for the memory each merge blended into (``merged_into``)."""
    for mc in changes:
        mc.merged_into = []
        for slot_ids, cause in mc.merges:
            target = s.execute(
                select(Memory)
                .join(MemorySlot, MemorySlot.memory_id == Memory.id)
                .where(MemorySlot.tenant_id == mc.tenant_id, MemorySlot.id.in_(list(slot_ids)))
                .where(Memory.deleted_at.is_(None))
                .order_by(MemorySlot.id)
                .limit(1)
            ).scalar()
            mc.merged_into.append(None if target is None else target.id)
            if target is not None:
                target.updated_at = utcnow()
                _event(s, mc.tenant_id, target.user_id, target.id, "merged", cause)


def retire_emptied(s: Session, changes: Sequence) -> None:
    """Tombstone the memories to retire that have no slot left (after all removals)."""
    for mc in changes:
        for memory_id, cause in sorted(mc.retire.items()):
            left = s.scalar(
                select(func.count(MemorySlot.id)).where(
                    MemorySlot.tenant_id == mc.tenant_id, MemorySlot.memory_id == memory_id
                )
            )
            m = s.scalar(
                select(Memory).where(
                    Memory.tenant_id == mc.tenant_id,
                    Memory.id == memory_id,
                    Memory.deleted_at.is_(None),
                )
            )
            if left or m is None:
                continue
            now = utcnow()
            m.deleted_at, m.updated_at, m.text, m.key = now, now, None, None
            m.span_start = m.span_end = 0
            _event(s, mc.tenant_id, m.user_id, memory_id, "deleted", cause)


def log_reads(s: Session, slot_changes: Sequence) -> None:
    """One ``read`` event per live memory whose slots this commit's turn read.

    The cause counts the slot reads (a memory of 12 token slots read at 3 positions by a
    top-k read of 4 is "12 slot reads"); the memory's own ``reads`` is the sum over its
    slots, kept by the read counts themselves.
    """
    for ch in slot_changes:
        if not ch.reads:
            continue
        per_memory: dict[str, int] = {}
        rows = s.execute(
            select(MemorySlot.id, MemorySlot.memory_id).where(
                MemorySlot.bank_id == ch.bank_id,
                MemorySlot.id.in_(sorted(ch.reads)),
                MemorySlot.memory_id.is_not(None),
            )
        ).all()
        for slot_id, memory_id in rows:
            per_memory[memory_id] = per_memory.get(memory_id, 0) + ch.reads[slot_id]
        if not per_memory:
            continue
        owners = s.execute(
            select(Memory.id, Memory.user_id).where(
                Memory.tenant_id == ch.tenant_id,
                Memory.id.in_(sorted(per_memory)),
                Memory.deleted_at.is_(None),
            )
        ).all()
        for memory_id, user_id in sorted(owners):
            n = per_memory[memory_id]
            _event(s, ch.tenant_id, user_id, memory_id, "read", f"{n} slot read(s) in a turn")


def apply_slot_and_memory_changes(
    s: Session,
    slot_changes: Sequence,
    user_message_id: int | None,
    memory_changes: Sequence[MemoryChanges] = (),
) -> list[list[int]]:
    """Every bank's changes and the memories they carry, in the caller's transaction;
    ``memory_changes``: more, written without slots (text memories, their forgets).

    Banks are applied in id order (their rows are locked in one order: no deadlock).
    Returns, per change set in the given order, the ids of its new slots.
    """
    from storage.slot_view import apply_changes

    memory_changes = [
        *(ch.memories for ch in slot_changes if ch.memories is not None),
        *memory_changes,
    ]
    insert_new(s, memory_changes, [a for ch in slot_changes for a in ch.adds], user_message_id)
    new: dict[int, list[int]] = {}
    for n, ch in sorted(enumerate(slot_changes), key=lambda nc: nc[1].bank_id):
        new[n] = apply_changes(s, ch, user_message_id)
    log_merges(s, memory_changes)
    retire_emptied(s, memory_changes)
    log_reads(s, slot_changes)
    return [new[n] for n in range(len(slot_changes))]
