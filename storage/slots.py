"""Memory slots: SQL rows with provenance + a FAISS index, per (tenant, namespace, layer).

:class:`SlotBank` implements :class:`retnet_core.slots.SlotStore` for the Retention Layer
and adds what storage needs (provenance, records, eviction). :class:`SlotManager` opens
banks and offers the admin view (list, inspect, evict, delete a namespace).

A namespace is a string naming the tenant-scoped owner: ``"user:<id>"`` or
``"session:<id>"`` (see :func:`namespace`). Every call takes the tenant id and every query
filters on it, so one tenant's slots are invisible to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from torch import Tensor

from retnet_core.slots import SlotStats
from storage.banks import BankIndex, bump_clock, log_changes
from storage.db import Database
from storage.memories import slots_removed
from storage.metrics import StorageMetrics
from storage.models import MemorySlot, VectorBank, utcnow
from storage.vector_index import IndexParams, as_matrix

_CHUNK = 900  # ids per IN (...) clause


def namespace(scope: str, scope_id: str) -> str:
    """The namespace string of a scope: ``namespace("user", "u1") == "user:u1"``."""
    if scope not in ("user", "session", "tenant"):
        raise ValueError(f"unknown scope {scope!r}")
    return f"{scope}:{scope_id}"


@dataclass(frozen=True)
class Provenance:
    """Where a slot came from: its memory and its own character span in the memory's
    source text (the message's content, or the memory's own text). Never the text."""

    session_id: str | None = None
    message_id: int | None = None
    span: tuple[int, int] | None = None
    memory_id: str | None = None


@dataclass(frozen=True)
class SlotRecord:
    """A slot as an admin sees it (vectors omitted)."""

    id: int
    namespace: str
    layer: int
    gate: float
    reads: int
    last_read: int
    created_tick: int
    session_id: str | None
    message_id: int | None
    span: tuple[int, int] | None
    text: str | None  # the slot's own span text (admin reads); None from bank records
    created_at: datetime
    last_read_at: datetime | None
    tenant_id: str = ""
    memory_id: str | None = None


def _blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)] or [[]]


def _load_slots(
    s: Session, bank_id: int, ids: list[int] | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Loader for :class:`BankIndex`: ids, keys and (in ``extra``) values of live slots."""
    cols = (MemorySlot.id, MemorySlot.key, MemorySlot.value)
    rows: list = []
    if ids is None:
        q = select(*cols).where(MemorySlot.bank_id == bank_id).order_by(MemorySlot.id)
        rows = list(s.execute(q).all())
    else:
        for part in _chunks(sorted(ids)):
            if part:
                q = select(*cols).where(MemorySlot.bank_id == bank_id, MemorySlot.id.in_(part))
                rows.extend(s.execute(q).all())
    out_ids = np.array([r[0] for r in rows], dtype=np.int64)
    keys = [np.frombuffer(r[1], dtype="<f4") for r in rows]
    values = [np.frombuffer(r[2], dtype="<f4") for r in rows]
    dim = keys[0].size if keys else 0
    return (
        out_ids,
        np.stack(keys) if keys else np.empty((0, dim), np.float32),
        {"values": values},
    )


class SlotBank:
    """One bank of slots; a :class:`retnet_core.slots.SlotStore` backed by SQL + FAISS."""

    def __init__(
        self,
        db: Database,
        metrics: StorageMetrics,
        row: VectorBank,
        params: IndexParams | None,
        index_path: Path | None,
    ) -> None:
        self.db, self.metrics = db, metrics
        self.bank_id, self.tenant_id = row.id, row.tenant_id
        self.namespace, self.layer = row.namespace, row.layer
        self.d_key, self.d_value, self.capacity = row.dim, row.d_value, row.capacity
        self._values: dict[int, np.ndarray] = {}
        self.index = BankIndex(
            db,
            row.id,
            row.dim,
            _load_slots,
            metrics,
            kind="slot",
            params=params,
            index_path=index_path,
            on_apply=self._mirror,
            on_reset=self._values.clear,
        )
        self.index.open()

    def _mirror(self, ids: np.ndarray, extra: dict, gone: np.ndarray) -> None:
        for item in gone.tolist():
            self._values.pop(item, None)
        for item, value in zip(ids.tolist(), extra.get("values", []), strict=True):
            self._values[item] = value

    # ---- SlotStore -----------------------------------------------------------------
    def __len__(self) -> int:
        with self.index.lock:
            self.index.sync()
            return len(self.index.index)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k by inner product; pads with (-inf, -1). Never returns a removed slot."""
        scores, ids = self.index.search(queries, k)
        self.metrics.slot_ops.labels("search").inc()
        dtype = queries.dtype if isinstance(queries, Tensor) else torch.float32
        return torch.from_numpy(scores).to(dtype), torch.from_numpy(ids)

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``ids``; KeyError for unknown (or removed) ids."""
        want = np.asarray(torch.as_tensor(ids).reshape(-1).tolist(), dtype=np.int64)
        with self.index.lock:
            self.index.sync()
            keys = self.index.index.vectors(want)
            values = (
                np.stack([self._values[i] for i in want.tolist()])
                if want.size
                else (np.empty((0, self.d_value), np.float32))
            )
        self.metrics.slot_ops.labels("fetch").inc()
        return torch.from_numpy(keys), torch.from_numpy(np.array(values, dtype=np.float32))

    def all(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every live slot, ascending id."""
        with self.index.lock:
            self.index.sync()
            ids = self.index.index.ids()
            keys, values = self.fetch(torch.from_numpy(ids))
        return torch.from_numpy(ids), keys, values

    def add(self, keys: Tensor, values: Tensor, gates: Tensor) -> Tensor:
        """Append slots without provenance; returns their new ids."""
        n = as_matrix(keys, self.d_key).shape[0]
        return self.add_with_provenance(keys, values, gates, [Provenance()] * n)

    def add_with_provenance(
        self, keys: object, values: object, gates: object, provenance: Sequence[Provenance]
    ) -> Tensor:
        """Append slots with their provenance in one transaction; returns new ids."""
        k = as_matrix(keys, self.d_key)
        v = as_matrix(values, self.d_value)
        g = np.asarray(torch.as_tensor(gates).reshape(-1).tolist(), dtype=np.float64)
        if not (k.shape[0] == v.shape[0] == g.shape[0] == len(provenance)):
            raise ValueError("keys, values, gates and provenance differ in length")
        if k.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64)
        now = utcnow()
        with self.db.write() as s:
            tick = bump_clock(s, self.bank_id)
            rows = [
                MemorySlot(
                    bank_id=self.bank_id,
                    tenant_id=self.tenant_id,
                    key=_blob(k[i]),
                    value=_blob(v[i]),
                    gate=float(g[i]),
                    reads=0,
                    last_read=-1,
                    created_tick=tick,
                    session_id=p.session_id,
                    message_id=p.message_id,
                    span_start=p.span[0] if p.span else None,
                    span_end=p.span[1] if p.span else None,
                    memory_id=p.memory_id,
                    created_at=now,
                )
                for i, p in enumerate(provenance)
            ]
            s.add_all(rows)
            s.flush()
            new_ids = [r.id for r in rows]
            log_changes(s, self.bank_id, [(i, "add") for i in new_ids])
        self.metrics.slot_ops.labels("add").inc(len(new_ids))
        self.index.sync()
        return torch.tensor(new_ids, dtype=torch.int64)

    def update(self, ids: Tensor, keys: Tensor, values: Tensor) -> None:
        """Overwrite key and value of existing slots; KeyError for unknown ids."""
        want = [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]
        k, v = as_matrix(keys, self.d_key), as_matrix(values, self.d_value)
        with self.db.write() as s:
            for i, item in enumerate(want):
                res = s.execute(
                    update(MemorySlot)
                    .where(MemorySlot.id == item, MemorySlot.bank_id == self.bank_id)
                    .values(key=_blob(k[i]), value=_blob(v[i]))
                )
                if res.rowcount != 1:
                    raise KeyError(f"unknown slot id {item}")
            log_changes(s, self.bank_id, [(i, "update") for i in want])
        self.metrics.slot_ops.labels("update").inc(len(want))
        self.index.sync()

    def remove(self, ids: Tensor) -> None:
        """Delete slots (eviction); later searches, fetches and ``all`` never return them."""
        self.evict([int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()])

    def evict(self, ids: Sequence[int], cause: str = "evicted") -> int:
        """Delete slots of this bank by id; returns how many existed."""
        ids = sorted({int(i) for i in ids})
        if not ids:
            return 0
        with self.db.write() as s:
            gone = _delete_slots(s, self.bank_id, self.tenant_id, ids, cause)
        self.metrics.slot_ops.labels("evict").inc(gone)
        self.index.sync()
        return gone

    def touch(self, ids: Tensor) -> None:
        """Record one read of each id (reads += 1, last_read = the bank's next tick)."""
        want = sorted({int(i) for i in torch.as_tensor(ids).reshape(-1).tolist() if int(i) >= 0})
        if not want:
            return
        with self.db.write() as s:
            tick = bump_clock(s, self.bank_id)
            for part in _chunks(want):
                s.execute(
                    update(MemorySlot)
                    .where(MemorySlot.bank_id == self.bank_id, MemorySlot.id.in_(part))
                    .values(reads=MemorySlot.reads + 1, last_read=tick, last_read_at=utcnow())
                )
        self.metrics.slot_ops.labels("touch").inc(len(want))

    def stats(self) -> SlotStats:
        """Bookkeeping of every live slot, ascending id (the order of :meth:`all`)."""
        with self.index.lock:
            self.index.sync()
            live = set(self.index.index.ids().tolist())
        with self.db.read() as s:
            rows = [
                r
                for r in s.execute(
                    select(
                        MemorySlot.id,
                        MemorySlot.gate,
                        MemorySlot.reads,
                        MemorySlot.last_read,
                        MemorySlot.created_tick,
                    )
                    .where(MemorySlot.bank_id == self.bank_id)
                    .order_by(MemorySlot.id)
                ).all()
                if r[0] in live
            ]
        col = list(zip(*rows, strict=True)) if rows else [[]] * 5
        return SlotStats(
            ids=torch.tensor(col[0], dtype=torch.int64),
            gate=torch.tensor(col[1], dtype=torch.float32),
            reads=torch.tensor(col[2], dtype=torch.int64),
            last_read=torch.tensor(col[3], dtype=torch.int64),
            created=torch.tensor(col[4], dtype=torch.int64),
        )

    # ---- storage extras ------------------------------------------------------------
    def records(self, ids: Sequence[int] | None = None) -> list[SlotRecord]:
        """Provenance and bookkeeping of this bank's slots (all, or ``ids``).

        ``text`` stays None here (the service's own bookkeeping needs no text; admin
        reads resolve it through :class:`storage.slot_manager.SlotManager`)."""
        q = select(MemorySlot).where(MemorySlot.bank_id == self.bank_id)
        if ids is not None:
            q = q.where(MemorySlot.id.in_([int(i) for i in ids]))
        with self.db.read() as s:
            return [
                _record(r, self.namespace, self.layer) for r in s.scalars(q.order_by(MemorySlot.id))
            ]

    def sync(self) -> int:
        """Catch the index up with SQL; returns log entries applied."""
        return self.index.sync()

    def rebuild(self) -> None:
        """Rebuild the index from SQL."""
        self.index.rebuild()

    def save_index(self) -> None:
        """Persist the index file (when the manager has an ``index_dir``)."""
        self.index.save()


def _delete_slots(
    s: Session, bank_id: int, tenant_id: str, ids: list[int], cause: str = "evicted"
) -> int:
    """Delete slots, log the removals for the index, and tell their memories (one event
    per memory: ``evicted`` with ``cause``)."""
    gone: list[int] = []
    per_memory: dict[str, int] = {}
    for part in _chunks(ids):
        if part:
            res = s.execute(
                delete(MemorySlot)
                .where(MemorySlot.bank_id == bank_id, MemorySlot.tenant_id == tenant_id)
                .where(MemorySlot.id.in_(part))
                .returning(MemorySlot.id, MemorySlot.memory_id)
            )
            for item, memory_id in res.all():
                gone.append(item)
                if memory_id is not None:
                    per_memory[memory_id] = per_memory.get(memory_id, 0) + 1
    log_changes(s, bank_id, [(i, "remove") for i in sorted(gone)])
    slots_removed(s, tenant_id, per_memory, cause)
    return len(gone)


def _record(r: MemorySlot, ns: str, layer: int, source: str | None = None) -> SlotRecord:
    """A slot's record; ``source`` is its memory's source text, sliced to the slot's span."""
    span = (r.span_start, r.span_end) if r.span_start is not None else None
    text = source[span[0] : span[1]] if source is not None and span is not None else None
    return SlotRecord(
        r.id,
        ns,
        layer,
        r.gate,
        r.reads,
        r.last_read,
        r.created_tick,
        r.session_id,
        r.message_id,
        span,
        text,
        r.created_at,
        r.last_read_at,
        r.tenant_id,
        r.memory_id,
    )
