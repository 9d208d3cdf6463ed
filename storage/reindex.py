"""Which slot banks another model wrote, and the storage steps of re-encoding them.

A slot bank (tenant, namespace, layer) records the fingerprint of the model whose
Retention Layer wrote it (``vector_banks.fingerprint``). Slots are keys and values in
that model's hidden space: another model cannot read them. Re-encoding a namespace
(all its layers at once, because one memory writes into every memory layer) is:

1. :func:`reset_namespace`: evict every slot of the namespace (memories stay, their
   slot counts go to 0, an ``evicted`` event each) and drop its bank rows, so the next
   write creates them with the serving model's dims and fingerprint;
2. the caller writes each live memory's text again (the memory write path; slots keep
   the memory id);
3. :func:`finish_namespace`: stamp the banks and set each memory's slot count.

A bank without a fingerprint (made before migration 0005) is adopted by the first
model that serves it with matching dims (:func:`adopt_unstamped`).
"""

from __future__ import annotations

from sqlalchemy import case, delete, func, select, update

from storage.db import Database
from storage.memories import MemoryInfo, _base, _info
from storage.models import ChangeLog, Memory, MemorySlot, VectorBank
from storage.slot_manager import SlotManager


def _foreign(fingerprint: str, d_key: int, d_value: int):
    """SQL: a slot bank written by another model (or with other dims)."""
    other = VectorBank.fingerprint.is_not(None) & (VectorBank.fingerprint != fingerprint)
    return other | (VectorBank.dim != d_key) | (VectorBank.d_value != d_value)


def stale_namespaces(
    db: Database, fingerprint: str, d_key: int, d_value: int
) -> list[tuple[str, str]]:
    """(tenant id, namespace) of every slot bank another model wrote, sorted."""
    q = (
        select(VectorBank.tenant_id, VectorBank.namespace)
        .where(VectorBank.kind == "slot", _foreign(fingerprint, d_key, d_value))
        .distinct()
        .order_by(VectorBank.tenant_id, VectorBank.namespace)
    )
    with db.read() as s:
        return [(t, ns) for t, ns in s.execute(q).all()]


def adopt_unstamped(db: Database, fingerprint: str, d_key: int, d_value: int) -> int:
    """Stamp banks without a fingerprint whose dims match; returns how many."""
    with db.write() as s:
        got = s.execute(
            update(VectorBank)
            .where(
                VectorBank.kind == "slot",
                VectorBank.fingerprint.is_(None),
                VectorBank.dim == d_key,
                VectorBank.d_value == d_value,
            )
            .values(fingerprint=fingerprint)
        )
        return int(got.rowcount or 0)


def live_memories(db: Database, tenant_id: str, namespace: str) -> list[MemoryInfo]:
    """The namespace's live memories with their source text, oldest first."""
    q = (
        _base(tenant_id)
        .where(Memory.namespace == namespace, Memory.deleted_at.is_(None))
        .order_by(Memory.created_at, Memory.id)
    )
    with db.read() as s:
        return [_info(*row) for row in s.execute(q).all()]


def namespace_version(db: Database, tenant_id: str, namespace: str) -> tuple:
    """What changes whenever the namespace's live memories do: (live count, newest
    ``created_at``, newest ``updated_at``, newest ``deleted_at``). A write adds a row and
    a newer ``created_at``, a deletion a newer ``deleted_at``; one indexed query, so a
    reader can keep the memories and ask only this (``memsvc.services.memory_notes``)."""
    live = func.coalesce(func.sum(case((Memory.deleted_at.is_(None), 1), else_=0)), 0)
    q = select(
        live, func.max(Memory.created_at), func.max(Memory.updated_at), func.max(Memory.deleted_at)
    ).where(Memory.tenant_id == tenant_id, Memory.namespace == namespace)
    with db.read() as s:
        return tuple(s.execute(q).one())


def reset_namespace(slots: SlotManager, db: Database, tenant_id: str, namespace: str) -> int:
    """Evict the namespace's slots and drop its bank rows; returns the slots evicted."""
    gone = slots.delete_namespace(tenant_id, namespace, cause="reindex")
    opened = slots.drop_open(tenant_id, namespace)
    where = (
        VectorBank.tenant_id == tenant_id,
        VectorBank.kind == "slot",
        VectorBank.namespace == namespace,
    )
    with db.write() as s:
        ids = s.scalars(select(VectorBank.id).where(*where)).all()
        if ids:
            s.execute(delete(ChangeLog).where(ChangeLog.bank_id.in_(ids)))
            s.execute(delete(MemorySlot).where(MemorySlot.bank_id.in_(ids)))
            s.execute(delete(VectorBank).where(VectorBank.id.in_(ids)))
    for bank in opened:  # the rows are gone: a sync empties each in-process index
        bank.sync()
    return gone


def finish_namespace(db: Database, tenant_id: str, namespace: str, fingerprint: str) -> None:
    """Stamp the namespace's banks with ``fingerprint`` and recount its memories' slots."""
    counts = (
        select(func.count(MemorySlot.id)).where(MemorySlot.memory_id == Memory.id).scalar_subquery()
    )
    with db.write() as s:
        s.execute(
            update(VectorBank)
            .where(
                VectorBank.tenant_id == tenant_id,
                VectorBank.kind == "slot",
                VectorBank.namespace == namespace,
            )
            .values(fingerprint=fingerprint)
        )
        s.execute(
            update(Memory)
            .where(
                Memory.tenant_id == tenant_id,
                Memory.namespace == namespace,
                Memory.deleted_at.is_(None),
            )
            .values(slots=counts)
            .execution_options(synchronize_session=False)
        )
