"""A turn's in-memory view of a slot bank, and the merge of its changes into SQL.

The Retention Layer reads and writes memory during a turn's prefill and decode, on the
model thread, where no I/O may happen. So before the turn a :class:`BankView` is loaded
(off that thread, one read transaction for all of a turn's banks): the bank is caught up
from the change log first, so every eviction committed before the turn is seen, then

- a small bank (≤ ``EXACT_MAX`` slots) is copied as exact tensors with its bookkeeping;
- a large bank is read through the shared in-process FAISS index (no catch-up during
  the turn), minus what the view removed, plus what it added.

The view is a :class:`retnet_core.slots.SlotStore`: reads ``touch`` counters in memory,
``add`` / ``update`` / ``remove`` are recorded. :meth:`BankView.changes` hands them to
the turn's commit, which :func:`apply_changes` writes in the same transaction as the
messages and the state.

Two turns of one user in two sessions share the bank without sharing a lock, so the
merge is built to commute: appends get fresh ids, read counts are increments, a removal
of a slot already gone is a no-op. Blends are compare-and-set on the bank's version
(``vector_banks.last_seq``, the change-log head): when the head moved since the view was
loaded, a blended slot that another turn changed gets the delta of this blend added to
its current key and value (key renormalised), and one that another turn removed stays
removed (removal wins). Either order of the two commits gives the same slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from torch import Tensor

from retnet_core.slots import SlotStats
from storage.banks import bump_clock, log_changes
from storage.memory_commit import TURN_USER_MESSAGE, MemoryChanges
from storage.models import ChangeLog, MemorySlot, VectorBank, utcnow

#: banks up to this size are copied into the view; larger ones read the FAISS index
EXACT_MAX = 4096
#: ids the view gives its own new slots before the commit assigns real ones
PENDING_BASE = 2**58
#: provenance ``message_id`` TURN_USER_MESSAGE means "the user message this turn commits"
#: (any provenance object with ``session_id``, ``message_id``, ``span`` and ``memory_id``
#: attributes is accepted; ``span`` is the slot's own character span in its memory's source)
__all__ = ["TURN_USER_MESSAGE", "BankChanges", "BankView", "apply_changes", "load_view"]


@dataclass(frozen=True)
class ViewRecord:
    """What a turn may ask about a slot: id, origin (memory) and creation tick."""

    id: int
    message_id: int | None
    session_id: str | None
    created_tick: int
    memory_id: str | None = None


@dataclass
class BankChanges:
    """What one turn did to one bank (see the module docstring for the merge)."""

    bank_id: int
    tenant_id: str
    base_seq: int
    adds: list[tuple[np.ndarray, np.ndarray, float, object]] = field(default_factory=list)
    updates: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )  # id -> (new key, new value, base key, base value)
    removes: set[int] = field(default_factory=set)
    reads: dict[int, int] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)  # the view's ids of ``adds``
    causes: dict[int, str] = field(default_factory=dict)  # removal cause, when not "evicted"
    # the memories this write made, merged into or emptied (storage.memory_commit)
    memories: MemoryChanges | None = None

    def empty(self) -> bool:
        return not (self.adds or self.updates or self.removes or self.reads)


class BankView:
    """One bank as a turn sees it; see the module docstring."""

    def __init__(self, bank, base_seq: int, rows: list | None) -> None:
        self.bank = bank  # storage.slots.SlotBank (its index, for large banks)
        self.d_key, self.d_value, self.capacity = bank.d_key, bank.d_value, bank.capacity
        self.tenant_id, self.namespace = bank.tenant_id, bank.namespace
        self.exact = rows is not None
        self._changes = BankChanges(bank.bank_id, bank.tenant_id, base_seq)
        self._clock = 0
        rows = rows or []
        self._ids = torch.tensor([r.id for r in rows], dtype=torch.int64)
        self._keys = _stack([r.key for r in rows], self.d_key)
        self._values = _stack([r.value for r in rows], self.d_value)
        self._gate = torch.tensor([r.gate for r in rows], dtype=torch.float32)
        self._reads = torch.tensor([r.reads for r in rows], dtype=torch.int64)
        self._last = torch.tensor([r.last_read for r in rows], dtype=torch.int64)
        self._created = torch.tensor([r.created_tick for r in rows], dtype=torch.int64)
        self._records = {
            r.id: ViewRecord(r.id, r.message_id, r.session_id, r.created_tick, r.memory_id)
            for r in rows
        }
        self._base: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._large_len = 0 if self.exact else len(bank.index.index)

    # ---- SlotStore -------------------------------------------------------------------
    def __len__(self) -> int:
        if self.exact:
            return int(self._ids.numel())
        pending = len(self._changes.adds)
        return self._large_len - len(self._changes.removes) + pending

    def all(self) -> tuple[Tensor, Tensor, Tensor]:
        if not self.exact:
            raise TypeError("a large bank is read through search, not all()")
        return self._ids.clone(), self._keys.clone(), self._values.clone()

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        q = torch.as_tensor(queries).float()
        if self.exact:
            return _topk(q, self._keys, self._ids, k)
        extra = k + len(self._changes.removes)
        with self.bank.index.lock:  # in memory only: no catch-up during a turn
            scores, ids = self.bank.index.search(q.numpy(), extra, sync=False)
        s, i = torch.from_numpy(scores).float(), torch.from_numpy(ids)
        gone = torch.tensor(sorted(self._changes.removes), dtype=torch.int64)
        s = s.masked_fill(torch.isin(i, gone), float("-inf"))
        p_keys = _stack([a[0] for a in self._changes.adds], self.d_key)
        p_ids = PENDING_BASE + torch.arange(len(self._changes.adds), dtype=torch.int64)
        ps, pi = _topk(q, p_keys, p_ids, k)
        s, i = torch.cat([s, ps], 1), torch.cat([i, pi], 1)
        top = s.topk(min(k, s.shape[1]), dim=1)
        ids = i.gather(1, top.indices).masked_fill(top.values == float("-inf"), -1)
        return top.values, ids

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        want = torch.as_tensor(ids).reshape(-1).tolist()
        keys = torch.zeros(len(want), self.d_key)
        values = torch.zeros(len(want), self.d_value)
        for n, item in enumerate(want):
            keys[n], values[n] = self._one(int(item))
        return keys, values

    def _one(self, item: int) -> tuple[Tensor, Tensor]:
        if item in self._changes.removes:
            raise KeyError(f"unknown slot ids: [{item}]")
        if item >= PENDING_BASE:
            key, value, _, _ = self._changes.adds[item - PENDING_BASE]
            return torch.from_numpy(key), torch.from_numpy(value)
        if item in self._changes.updates:
            key, value, _, _ = self._changes.updates[item]
            return torch.from_numpy(key), torch.from_numpy(value)
        if self.exact:
            row = self._row(item)
            return self._keys[row], self._values[row]
        with self.bank.index.lock:
            key = self.bank.index.index.vectors(np.array([item], np.int64))[0]
            value = self.bank._values.get(item)
        if value is None:
            raise KeyError(f"unknown slot ids: [{item}]")
        return torch.from_numpy(np.array(key)), torch.from_numpy(np.array(value))

    def _row(self, item: int) -> int:
        hit = (self._ids == item).nonzero()
        if hit.numel() == 0:
            raise KeyError(f"unknown slot ids: [{item}]")
        return int(hit[0, 0])

    def add(self, keys: Tensor, values: Tensor, gates: Tensor) -> Tensor:
        n = int(torch.as_tensor(keys).shape[0])
        return self.add_with_provenance(keys, values, gates, [None] * n)

    def add_with_provenance(self, keys, values, gates, provenance) -> Tensor:
        k = torch.as_tensor(keys).detach().float().reshape(-1, self.d_key)
        v = torch.as_tensor(values).detach().float().reshape(-1, self.d_value)
        g = torch.as_tensor(gates).detach().float().reshape(-1)
        first = PENDING_BASE + len(self._changes.adds)
        new = torch.arange(first, first + k.shape[0], dtype=torch.int64)
        tick = self._tick()
        self._changes.pending.extend(new.tolist())
        for i in range(k.shape[0]):
            self._changes.adds.append(
                (k[i].numpy().copy(), v[i].numpy().copy(), float(g[i]), provenance[i])
            )
        if self.exact:
            self._ids = torch.cat([self._ids, new])
            self._keys = torch.cat([self._keys, k])
            self._values = torch.cat([self._values, v])
            self._gate = torch.cat([self._gate, g])
            self._reads = torch.cat([self._reads, torch.zeros(len(new), dtype=torch.int64)])
            self._last = torch.cat([self._last, torch.full((len(new),), -1, dtype=torch.int64)])
            self._created = torch.cat([self._created, torch.full((len(new),), tick)])
        return new

    def update(self, ids: Tensor, keys: Tensor, values: Tensor) -> None:
        want = torch.as_tensor(ids).reshape(-1).tolist()
        k = torch.as_tensor(keys).detach().float().reshape(-1, self.d_key)
        v = torch.as_tensor(values).detach().float().reshape(-1, self.d_value)
        for n, item in enumerate(int(i) for i in want):
            old_k, old_v = self._one(item)
            if item >= PENDING_BASE:
                _, _, g, prov = self._changes.adds[item - PENDING_BASE]
                self._changes.adds[item - PENDING_BASE] = (
                    k[n].numpy().copy(),
                    v[n].numpy().copy(),
                    g,
                    prov,
                )
            else:
                base = self._base.setdefault(item, (old_k.numpy().copy(), old_v.numpy().copy()))
                self._changes.updates[item] = (k[n].numpy().copy(), v[n].numpy().copy(), *base)
            if self.exact:
                row = self._row(item)
                self._keys[row], self._values[row] = k[n], v[n]

    def remove(self, ids: Tensor) -> None:
        self.evict(torch.as_tensor(ids).reshape(-1).tolist())

    def evict(self, ids, cause: str = "evicted") -> int:
        """Remove slots from the view (recorded for the commit, with ``cause`` for their
        memories' change log); returns how many."""
        gone = [int(i) for i in ids]
        for item in gone:
            if item < PENDING_BASE:
                self._changes.removes.add(item)
                if cause != "evicted":
                    self._changes.causes[item] = cause
                self._changes.updates.pop(item, None)
                self._changes.reads.pop(item, None)
            else:  # a slot of this very turn: drop it before it is ever written
                key, value, _, prov = self._changes.adds[item - PENDING_BASE]
                self._changes.adds[item - PENDING_BASE] = (key, value, -1.0, prov)
        if self.exact and gone:
            keep = ~torch.isin(self._ids, torch.tensor(gone, dtype=torch.int64))
            for name in ("_ids", "_keys", "_values", "_gate", "_reads", "_last", "_created"):
                setattr(self, name, getattr(self, name)[keep])
        return len(gone)

    def touch(self, ids: Tensor) -> None:
        want = [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist() if int(i) >= 0]
        if not want:
            return
        tick = self._tick()
        for item in want:
            if item < PENDING_BASE:
                self._changes.reads[item] = self._changes.reads.get(item, 0) + 1
        if self.exact:
            hit = torch.isin(self._ids, torch.tensor(want, dtype=torch.int64))
            self._reads[hit] += 1
            self._last[hit] = tick

    def stats(self) -> SlotStats:
        if not self.exact:
            raise TypeError("eviction statistics of a large bank are read at commit")
        return SlotStats(
            self._ids.clone(),
            self._gate.clone(),
            self._reads.clone(),
            self._last.clone(),
            self._created.clone(),
        )

    def records(self, ids=None) -> list[ViewRecord]:
        """Origin of the view's stored slots (not this turn's own, which have none yet)."""
        live = set(self._ids.tolist()) if self.exact else set(self._records)
        want = live if ids is None else {int(i) for i in ids} & live
        return [self._records[i] for i in sorted(want) if i in self._records]

    # ---- memories (committed with the slots, see storage.memory_commit) --------------
    def _memories(self) -> MemoryChanges:
        if self._changes.memories is None:
            self._changes.memories = MemoryChanges(self._changes.tenant_id)
        return self._changes.memories

    def memory_written(self, new, gate: float, cause: str) -> None:
        """``new`` (a NewMemory-like record) is the memory of slots appended by this write."""
        self._memories().new.append((new, float(gate), cause))

    def memory_merged(self, slot_ids, cause: str) -> None:
        """This write blended into ``slot_ids``: their memory gets a ``merged`` event."""
        self._memories().merges.append(([int(i) for i in slot_ids], cause))

    def retire_if_empty(self, memory_ids, cause: str) -> None:
        """Tombstone these memories at the commit if none of their slots is left."""
        for memory_id in memory_ids:
            self._memories().retire[memory_id] = cause

    def changes(self) -> BankChanges:
        """What the commit must write; the view should not be used afterwards."""
        ch = self._changes
        kept = [n for n, a in enumerate(ch.adds) if a[2] >= 0.0]  # not removed again
        ch.adds, ch.pending = [ch.adds[n] for n in kept], [ch.pending[n] for n in kept]
        return ch

    def _tick(self) -> int:
        self._clock += 1
        return int(self._created.max()) + self._clock if self._created.numel() else self._clock


def _stack(vectors: list, dim: int) -> Tensor:
    if not vectors:
        return torch.empty(0, dim)
    arrays = [np.frombuffer(v, "<f4") if isinstance(v, bytes | memoryview) else v for v in vectors]
    return torch.from_numpy(np.stack(arrays).astype(np.float32))


def _topk(q: Tensor, keys: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    n = q.shape[0]
    scores = torch.full((n, k), float("-inf"))
    out = torch.full((n, k), -1, dtype=torch.int64)
    if keys.shape[0] == 0 or k == 0:
        return scores, out
    sim = q @ keys.T
    kk = min(k, keys.shape[0])
    top, rows = sim.topk(kk, dim=1)
    scores[:, :kk], out[:, :kk] = top, ids[rows]
    return scores, out


# ---- loading and committing -------------------------------------------------------------
_COLS = (
    MemorySlot.id,
    MemorySlot.key,
    MemorySlot.value,
    MemorySlot.gate,
    MemorySlot.reads,
    MemorySlot.last_read,
    MemorySlot.created_tick,
    MemorySlot.message_id,
    MemorySlot.session_id,
    MemorySlot.memory_id,
)


def load_view(s: Session, bank) -> BankView:
    """Catch ``bank`` up from the change log and copy it (small) or wrap its index (large)."""
    bank.index.sync(session=s)
    head = int(bank.index.applied_seq)
    if len(bank.index.index) > EXACT_MAX:
        return BankView(bank, head, None)
    rows = s.execute(
        select(*_COLS).where(MemorySlot.bank_id == bank.bank_id).order_by(MemorySlot.id)
    ).all()
    return BankView(bank, head, rows)


def apply_changes(s: Session, ch: BankChanges, user_message_id: int | None) -> list[int]:
    """Write one view's changes inside the caller's transaction; returns the new slot ids.

    Order: removals, blends (merged when the version moved), appends, read counts.
    """
    from storage.slots import _blob, _delete_slots

    if ch.empty():
        return []
    tick = bump_clock(s, ch.bank_id)  # also locks the bank row: commits of a bank serialise
    head = int(s.scalar(select(VectorBank.last_seq).where(VectorBank.id == ch.bank_id)) or 0)
    by_cause: dict[str, list[int]] = {}
    for item in sorted(ch.removes):
        by_cause.setdefault(ch.causes.get(item, "evicted"), []).append(item)
    for cause, items in sorted(by_cause.items()):
        _delete_slots(s, ch.bank_id, ch.tenant_id, items, cause)
    if ch.updates:
        _merge_updates(s, ch, head, _blob)
    new_ids: list[int] = []
    if ch.adds:
        now = utcnow()
        rows = [
            _slot_row(ch, key, value, gate, prov, tick, now, user_message_id, _blob)
            for key, value, gate, prov in ch.adds
        ]
        s.add_all(rows)
        s.flush()
        new_ids = [r.id for r in rows]
        log_changes(s, ch.bank_id, [(i, "add") for i in new_ids])
    by_count: dict[int, list[int]] = {}
    for item, n in ch.reads.items():
        by_count.setdefault(n, []).append(item)
    for n, items in sorted(by_count.items()):
        s.execute(
            update(MemorySlot)
            .where(MemorySlot.bank_id == ch.bank_id, MemorySlot.id.in_(sorted(items)))
            .values(reads=MemorySlot.reads + n, last_read=tick, last_read_at=utcnow())
        )
    return new_ids


def _merge_updates(s: Session, ch: BankChanges, head: int, blob) -> None:
    """Blends: written as is when nobody changed the slot since the view; else merged."""
    moved: set[int] = set()
    if head != ch.base_seq:  # the compare-and-set failed: who changed what since?
        moved = set(
            s.scalars(
                select(ChangeLog.item_id).where(
                    ChangeLog.bank_id == ch.bank_id,
                    ChangeLog.seq > ch.base_seq,
                    ChangeLog.item_id.in_(sorted(ch.updates)),
                )
            ).all()
        )
    done: list[int] = []
    for item, (key, value, base_k, base_v) in sorted(ch.updates.items()):
        if item in moved:
            row = s.execute(
                select(MemorySlot.key, MemorySlot.value).where(
                    MemorySlot.id == item, MemorySlot.bank_id == ch.bank_id
                )
            ).first()
            if row is None:  # removed by another turn: removal wins
                continue
            cur_k, cur_v = np.frombuffer(row[0], "<f4"), np.frombuffer(row[1], "<f4")
            key = cur_k + (key - base_k)
            key = key / max(float(np.linalg.norm(key)), 1e-12)
            value = cur_v + (value - base_v)
        res = s.execute(
            update(MemorySlot)
            .where(MemorySlot.id == item, MemorySlot.bank_id == ch.bank_id)
            .values(key=blob(key), value=blob(value))
        )
        if res.rowcount == 1:
            done.append(item)
    log_changes(s, ch.bank_id, [(i, "update") for i in done])


def _slot_row(ch, key, value, gate, prov, tick, now, user_message_id, blob) -> MemorySlot:
    message_id = getattr(prov, "message_id", None)
    if message_id == TURN_USER_MESSAGE:
        message_id = user_message_id
    span = getattr(prov, "span", None)
    return MemorySlot(
        bank_id=ch.bank_id,
        tenant_id=ch.tenant_id,
        key=blob(key),
        value=blob(value),
        gate=float(gate),
        reads=0,
        last_read=-1,
        created_tick=tick,
        session_id=getattr(prov, "session_id", None),
        message_id=message_id,
        span_start=span[0] if span else None,
        span_end=span[1] if span else None,
        memory_id=getattr(prov, "memory_id", None),
        created_at=now,
    )
