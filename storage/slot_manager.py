"""Opening slot banks, and the admin view of slots across banks (list, inspect, evict)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import NotFound, StorageError
from storage.metrics import StorageMetrics
from storage.models import Memory, MemorySlot, Message, VectorBank
from storage.slots import SlotBank, SlotRecord, _delete_slots, _record
from storage.vector_index import IndexParams


def _with_text() -> Select:
    """Slots with their bank's namespace and layer and their memory's source text (the
    message's content, or the memory's own text), for records that show the span text."""
    source = func.coalesce(Memory.text, Message.content)
    return (
        select(MemorySlot, VectorBank.namespace, VectorBank.layer, source)
        .join(VectorBank, VectorBank.id == MemorySlot.bank_id)
        .outerjoin(Memory, Memory.id == MemorySlot.memory_id)
        .outerjoin(Message, Message.id == Memory.message_id)
    )


@dataclass(frozen=True)
class BankInfo:
    namespace: str
    layer: int
    d_key: int
    d_value: int
    capacity: int | None
    size: int
    tenant_id: str = ""
    fingerprint: str | None = None  # the model that wrote the bank's slots


@dataclass(frozen=True)
class SlotQuery:
    """An admin filter over every tenant's slots (None: no condition), applied in SQL.

    ``session_id`` matches a slot's provenance session, or, for a slot without one, a
    bank of namespace ``session:<id>``. ``created_before`` is an aware datetime.
    """

    tenant_id: str | None = None
    namespace: str | None = None
    session_id: str | None = None
    layer: int | None = None
    min_gate: float | None = None
    max_gate: float | None = None
    min_reads: int | None = None
    max_reads: int | None = None
    created_before: datetime | None = None

    def where(self) -> list:
        """The SQL conditions (over MemorySlot joined with VectorBank)."""
        conds: list = []
        if self.tenant_id is not None:
            conds.append(MemorySlot.tenant_id == self.tenant_id)
        if self.namespace is not None:
            conds.append(VectorBank.namespace == self.namespace)
        if self.session_id is not None:
            by_ns = and_(
                MemorySlot.session_id.is_(None),
                VectorBank.namespace == f"session:{self.session_id}",
            )
            conds.append(or_(MemorySlot.session_id == self.session_id, by_ns))
        if self.layer is not None:
            conds.append(VectorBank.layer == self.layer)
        if self.min_gate is not None:
            conds.append(MemorySlot.gate >= self.min_gate)
        if self.max_gate is not None:
            conds.append(MemorySlot.gate <= self.max_gate)
        if self.min_reads is not None:
            conds.append(MemorySlot.reads >= self.min_reads)
        if self.max_reads is not None:
            conds.append(MemorySlot.reads <= self.max_reads)
        if self.created_before is not None:
            conds.append(MemorySlot.created_at <= self.created_before)
        return conds


def _bank_info(b: VectorBank, size: int) -> BankInfo:
    return BankInfo(
        b.namespace, b.layer, b.dim, b.d_value, b.capacity, size, b.tenant_id, b.fingerprint
    )


class SlotManager:
    """Slot banks of every tenant; each (tenant, namespace, layer) is opened once."""

    def __init__(
        self,
        db: Database,
        metrics: StorageMetrics,
        *,
        index_dir: Path | None = None,
        params: IndexParams | None = None,
    ) -> None:
        self.db, self.metrics, self.index_dir, self.params = db, metrics, index_dir, params
        self._banks: dict[tuple[str, str, int], SlotBank] = {}
        self._lock = threading.Lock()
        #: recorded on banks created from now on: the model whose slots they hold
        self.model_fingerprint: str | None = None

    def bank(
        self,
        tenant_id: str,
        namespace: str,
        layer: int = 0,
        *,
        d_key: int,
        d_value: int,
        capacity: int | None = None,
    ) -> SlotBank:
        """The bank, created on first use; :class:`StorageError` if the dims differ."""
        with self._lock:
            key = (tenant_id, namespace, layer)
            bank = self._banks.get(key)
            if bank is None:
                row = self._row(tenant_id, namespace, layer) or self._create(
                    tenant_id, namespace, layer, d_key, d_value, capacity
                )
                bank = self._open(row)
            if (bank.d_key, bank.d_value) != (d_key, d_value):
                raise StorageError(
                    f"bank {namespace}/{layer} holds d_key={bank.d_key}, d_value={bank.d_value}"
                )
            return bank

    def open_bank(self, tenant_id: str, namespace: str, layer: int = 0) -> SlotBank:
        """An existing bank, or :class:`NotFound`."""
        with self._lock:
            bank = self._banks.get((tenant_id, namespace, layer))
            if bank is not None:
                return bank
            row = self._row(tenant_id, namespace, layer)
            if row is None:
                raise NotFound(f"slot bank {namespace}/{layer} not found")
            return self._open(row)

    def _open(self, row: VectorBank) -> SlotBank:
        path = self.index_dir / f"slots-{row.id}.faiss" if self.index_dir else None
        bank = SlotBank(self.db, self.metrics, row, self.params, path)
        self._banks[(row.tenant_id, row.namespace, row.layer)] = bank
        return bank

    def _row(self, tenant_id: str, namespace: str, layer: int) -> VectorBank | None:
        with self.db.read() as s:
            return s.scalar(
                select(VectorBank).where(
                    VectorBank.tenant_id == tenant_id,
                    VectorBank.kind == "slot",
                    VectorBank.namespace == namespace,
                    VectorBank.layer == layer,
                )
            )

    def _create(
        self,
        tenant_id: str,
        namespace: str,
        layer: int,
        d_key: int,
        d_value: int,
        capacity: int | None,
    ) -> VectorBank:
        try:
            with self.db.write() as s:
                row = VectorBank(
                    tenant_id=tenant_id,
                    kind="slot",
                    namespace=namespace,
                    layer=layer,
                    dim=d_key,
                    d_value=d_value,
                    capacity=capacity,
                    last_seq=0,
                    clock=0,
                    fingerprint=self.model_fingerprint,
                )
                s.add(row)
            return row
        except IntegrityError:  # created concurrently (or no such tenant)
            row2 = self._row(tenant_id, namespace, layer)
            if row2 is None:
                raise NotFound(f"tenant {tenant_id} not found") from None
            return row2

    # ---- admin ---------------------------------------------------------------------
    def banks(self, tenant_id: str) -> list[BankInfo]:
        """The tenant's slot banks with their sizes."""
        return self.admin_banks(tenant_id)

    def admin_banks(self, tenant_id: str | None = None) -> list[BankInfo]:
        """Slot banks with their sizes: one tenant's, or every tenant's for None (admin).

        Ordered by tenant, namespace, layer; each names its ``tenant_id``.
        """
        q = (
            select(VectorBank, func.count(MemorySlot.id))
            .outerjoin(MemorySlot, MemorySlot.bank_id == VectorBank.id)
            .where(VectorBank.kind == "slot")
        )
        if tenant_id is not None:
            q = q.where(VectorBank.tenant_id == tenant_id)
        q = q.group_by(VectorBank.id).order_by(
            VectorBank.tenant_id, VectorBank.namespace, VectorBank.layer
        )
        with self.db.read() as s:
            return [
                BankInfo(
                    b.namespace,
                    b.layer,
                    b.dim,
                    b.d_value,
                    b.capacity,
                    n,
                    b.tenant_id,
                    b.fingerprint,
                )
                for b, n in s.execute(q).all()
            ]

    def admin_list(
        self, query: SlotQuery, *, limit: int | None = 100, offset: int = 0
    ) -> list[SlotRecord]:
        """Slots of every tenant (or ``query.tenant_id``'s) matching ``query``, by id.

        For the operator's admin API only: tenant-facing reads use :meth:`list`.
        """
        q = _with_text().where(*query.where()).order_by(MemorySlot.id).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.db.read() as s:
            return [_record(*row) for row in s.execute(q).all()]

    def admin_get(self, slot_id: int) -> SlotRecord:
        """Any tenant's slot by its (globally unique) id, or :class:`NotFound` (admin)."""
        with self.db.read() as s:
            got = s.execute(_with_text().where(MemorySlot.id == int(slot_id))).first()
        if got is None:
            raise NotFound(f"slot {slot_id} not found")
        return _record(*got)

    def admin_evict(self, query: SlotQuery) -> list[int]:
        """Evict every slot matching ``query`` (all tenants); returns the evicted ids."""
        with self.db.read() as s:
            rows = s.execute(
                select(MemorySlot.id, MemorySlot.tenant_id)
                .join(VectorBank, VectorBank.id == MemorySlot.bank_id)
                .where(*query.where())
                .order_by(MemorySlot.id)
            ).all()
        by_tenant: dict[str, list[int]] = defaultdict(list)
        for item, tenant_id in rows:
            by_tenant[tenant_id].append(item)
        for tenant_id, ids in by_tenant.items():
            self.evict(tenant_id, ids)
        return [item for item, _ in rows]

    def list(
        self,
        tenant_id: str,
        *,
        namespace: str | None = None,
        layer: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[SlotRecord]:
        """The tenant's slots with provenance, ascending id."""
        q = _with_text().where(MemorySlot.tenant_id == tenant_id)
        if namespace is not None:
            q = q.where(VectorBank.namespace == namespace)
        if layer is not None:
            q = q.where(VectorBank.layer == layer)
        q = q.order_by(MemorySlot.id).limit(limit).offset(offset)
        with self.db.read() as s:
            return [_record(*row) for row in s.execute(q).all()]

    def get(self, tenant_id: str, slot_id: int) -> SlotRecord:
        """One of the tenant's slots, or :class:`NotFound`."""
        with self.db.read() as s:
            got = s.execute(
                _with_text().where(MemorySlot.id == slot_id, MemorySlot.tenant_id == tenant_id)
            ).first()
        if got is None:
            raise NotFound(f"slot {slot_id} not found")
        return _record(*got)

    def evict(self, tenant_id: str, slot_ids: Sequence[int], cause: str = "evicted") -> int:
        """Delete the tenant's slots by id (others' ids are ignored); returns how many."""
        ids = sorted({int(i) for i in slot_ids})
        if not ids:
            return 0
        with self.db.read() as s:
            rows = s.execute(
                select(MemorySlot.id, MemorySlot.bank_id).where(
                    MemorySlot.tenant_id == tenant_id, MemorySlot.id.in_(ids)
                )
            ).all()
        by_bank: dict[int, list[int]] = defaultdict(list)
        for item, bank_id in rows:
            by_bank[bank_id].append(item)
        gone = 0
        for bank_id, items in sorted(by_bank.items()):
            with self.db.write() as s:
                gone += _delete_slots(s, bank_id, tenant_id, items, cause)
        self.metrics.slot_ops.labels("evict").inc(gone)
        self._sync_open(tenant_id)
        return gone

    def delete_namespace(self, tenant_id: str, namespace: str, cause: str = "evicted") -> int:
        """Evict every slot of a namespace (all layers); returns how many."""
        with self.db.read() as s:
            ids = s.scalars(
                select(MemorySlot.id)
                .join(VectorBank, VectorBank.id == MemorySlot.bank_id)
                .where(MemorySlot.tenant_id == tenant_id, VectorBank.namespace == namespace)
            ).all()
        return self.evict(tenant_id, ids, cause)

    def drop_open(self, tenant_id: str, namespace: str) -> list[SlotBank]:
        """Forget the open banks of a namespace (their rows are being deleted)."""
        with self._lock:
            keys = [k for k in self._banks if k[:2] == (tenant_id, namespace)]
            return [self._banks.pop(k) for k in keys]

    def _sync_open(self, tenant_id: str) -> None:
        with self._lock:
            banks = [b for (t, _, _), b in self._banks.items() if t == tenant_id]
        for bank in banks:
            bank.sync()

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop the open banks of a (deleted) tenant after emptying their indexes."""
        with self._lock:
            keys = [k for k in self._banks if k[0] == tenant_id]
            banks = [self._banks.pop(k) for k in keys]
        for bank in banks:
            bank.sync()  # the bank row is gone: sync empties the index

    def save_indexes(self) -> None:
        """Persist every open bank's index (with an ``index_dir``)."""
        with self._lock:
            banks = list(self._banks.values())
        for bank in banks:
            bank.save_index()
