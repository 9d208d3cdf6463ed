"""The slot-store protocol through which the Retention Layer reaches its memory slots.

retnet_core never opens a database: it talks to a bank of memory slots only through
:class:`SlotStore`. ``storage`` implements it over SQL rows plus a FAISS index;
:class:`ExactSlotStore` here is the exact in-memory implementation used for training
and tests.

A bank holds one namespace (tenant + scope) for one model layer. Every slot has

- ``key``   (d_key,)   what a memory query is matched against (inner product),
- ``value`` (d_value,) what a read returns,
- ``gate``  the write gate's score in [0, 1] when it was written,
- ``reads`` how many reads attended to it, ``last_read`` and ``created``: logical
  clock ticks (not wall time) so eviction is deterministic in tests.

Ids are int64 and never reused inside a bank, so a removed slot can never come back
under its old id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class SlotStats:
    """Per-slot bookkeeping used by the eviction policies; all tensors are (N,)."""

    ids: Tensor  # int64
    gate: Tensor  # float
    reads: Tensor  # int64
    last_read: Tensor  # int64 logical tick, -1 when never read
    created: Tensor  # int64 logical tick


@runtime_checkable
class SlotStore(Protocol):
    """What the Retention Layer needs from a bank of slots (one namespace, one layer)."""

    d_key: int
    d_value: int
    capacity: int | None  # None: unbounded

    def __len__(self) -> int: ...

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k by inner product. queries (N, d_key) -> scores (N, k), ids (N, k).

        Where the bank has fewer than k slots the tail is padded with score -inf, id -1.
        """
        ...

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """ids (M,) -> keys (M, d_key), values (M, d_value); unknown ids raise KeyError."""
        ...

    def all(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every live slot: ids (N,), keys (N, d_key), values (N, d_value)."""
        ...

    def add(self, keys: Tensor, values: Tensor, gates: Tensor) -> Tensor:
        """Append slots. keys (M, d_key), values (M, d_value), gates (M,) -> new ids (M,)."""
        ...

    def update(self, ids: Tensor, keys: Tensor, values: Tensor) -> None:
        """Overwrite the key and value of existing slots (attention-based blend writes)."""
        ...

    def remove(self, ids: Tensor) -> None:
        """Delete slots; later searches, fetches and ``all`` never return them."""
        ...

    def touch(self, ids: Tensor) -> None:
        """Record one read of each id (reads += 1, last_read = now)."""
        ...

    def stats(self) -> SlotStats:
        """Bookkeeping of every live slot, in the same order as :meth:`all`."""
        ...


class ExactSlotStore:
    """Exact, in-memory :class:`SlotStore`: brute-force inner-product search.

    Used for training (differentiable callers read ``all()`` directly) and as the
    reference that approximate indexes are tested against.
    """

    def __init__(self, d_key: int, d_value: int, capacity: int | None = None) -> None:
        self.d_key = d_key
        self.d_value = d_value
        self.capacity = capacity
        self._keys = torch.empty(0, d_key)
        self._values = torch.empty(0, d_value)
        self._ids = torch.empty(0, dtype=torch.int64)
        self._gate = torch.empty(0)
        self._reads = torch.empty(0, dtype=torch.int64)
        self._last_read = torch.empty(0, dtype=torch.int64)
        self._created = torch.empty(0, dtype=torch.int64)
        self._next_id = 0
        self._clock = 0

    def __len__(self) -> int:
        return int(self._ids.numel())

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _rows(self, ids: Tensor) -> Tensor:
        ids = ids.reshape(-1).to(torch.int64)
        match = self._ids.unsqueeze(0) == ids.unsqueeze(1)  # (M, N)
        found = match.any(dim=1)
        if not bool(found.all()):
            missing = ids[~found].tolist()
            raise KeyError(f"unknown slot ids: {missing}")
        return match.to(torch.int64).argmax(dim=1)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        n = queries.shape[0]
        scores = torch.full((n, k), float("-inf"), dtype=queries.dtype)
        ids = torch.full((n, k), -1, dtype=torch.int64)
        if len(self) == 0 or k == 0:
            return scores, ids
        sim = queries @ self._keys.to(queries.dtype).T  # (N, slots)
        kk = min(k, len(self))
        top_scores, top_rows = sim.topk(kk, dim=1)
        scores[:, :kk] = top_scores
        ids[:, :kk] = self._ids[top_rows]
        return scores, ids

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        rows = self._rows(ids)
        return self._keys[rows], self._values[rows]

    def all(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._ids.clone(), self._keys.clone(), self._values.clone()

    def add(self, keys: Tensor, values: Tensor, gates: Tensor) -> Tensor:
        m = keys.shape[0]
        new_ids = torch.arange(self._next_id, self._next_id + m, dtype=torch.int64)
        self._next_id += m
        now = self._tick()
        self._keys = torch.cat([self._keys, keys.detach().to(self._keys.dtype)])
        self._values = torch.cat([self._values, values.detach().to(self._values.dtype)])
        self._ids = torch.cat([self._ids, new_ids])
        self._gate = torch.cat([self._gate, gates.detach().reshape(-1).to(self._gate.dtype)])
        self._reads = torch.cat([self._reads, torch.zeros(m, dtype=torch.int64)])
        self._last_read = torch.cat([self._last_read, torch.full((m,), -1, dtype=torch.int64)])
        self._created = torch.cat([self._created, torch.full((m,), now, dtype=torch.int64)])
        return new_ids

    def update(self, ids: Tensor, keys: Tensor, values: Tensor) -> None:
        rows = self._rows(ids)
        self._keys[rows] = keys.detach().to(self._keys.dtype)
        self._values[rows] = values.detach().to(self._values.dtype)

    def remove(self, ids: Tensor) -> None:
        if ids.numel() == 0:
            return
        keep = ~torch.isin(self._ids, ids.reshape(-1).to(torch.int64))
        for name in ("_keys", "_values", "_ids", "_gate", "_reads", "_last_read", "_created"):
            setattr(self, name, getattr(self, name)[keep])

    def touch(self, ids: Tensor) -> None:
        ids = ids.reshape(-1)
        ids = ids[ids >= 0]
        if ids.numel() == 0:
            return
        rows = self._rows(ids)
        now = self._tick()
        self._reads.index_add_(0, rows, torch.ones_like(rows))
        self._last_read[rows] = now

    def stats(self) -> SlotStats:
        return SlotStats(
            ids=self._ids.clone(),
            gate=self._gate.clone(),
            reads=self._reads.clone(),
            last_read=self._last_read.clone(),
            created=self._created.clone(),
        )


EXTRA_ID_BASE = 2**60  # ids of turn-local slots in a ReadThrough: far above any stored id


class ReadThrough:
    """A read-only view of a persistent bank plus turn-local slots (e.g. fed passages).

    Reads see both; the extra slots get ids ``EXTRA_ID_BASE + row``, so reads only ever
    ``touch`` the persistent bank, and nothing of the extra slots outlives the turn.
    Writes are refused: they belong to the persistent bank itself. ``primary`` may be
    None (a turn without memory that still reads its passages).
    """

    def __init__(self, primary: SlotStore | None, extra: ExactSlotStore) -> None:
        self.primary, self.extra = primary, extra
        self.d_key, self.d_value, self.capacity = extra.d_key, extra.d_value, None

    def __len__(self) -> int:
        return len(self.extra) + (len(self.primary) if self.primary is not None else 0)

    def _has_primary(self) -> bool:
        return self.primary is not None and len(self.primary) > 0

    def all(self) -> tuple[Tensor, Tensor, Tensor]:
        """Persistent slots, then the extra ones."""
        ids, keys, values = self.extra.all()
        ids = ids + EXTRA_ID_BASE
        if not self._has_primary():
            return ids, keys, values
        p_ids, p_keys, p_values = self.primary.all()  # type: ignore[union-attr]
        return (
            torch.cat([p_ids, ids]),
            torch.cat([p_keys, keys.to(p_keys)]),
            torch.cat([p_values, values.to(p_values)]),
        )

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k of both banks, merged by score; padding stays (−inf, −1)."""
        scores, ids = self.extra.search(queries, k)
        ids = torch.where(ids >= 0, ids + EXTRA_ID_BASE, ids)
        if self._has_primary():
            p_scores, p_ids = self.primary.search(queries, k)  # type: ignore[union-attr]
            scores, ids = torch.cat([p_scores.to(scores), scores], 1), torch.cat([p_ids, ids], 1)
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return top.values, ids.gather(1, top.indices)

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = torch.as_tensor(ids).reshape(-1)
        keys = torch.zeros(len(ids), self.d_key)
        values = torch.zeros(len(ids), self.d_value)
        mine = ids >= EXTRA_ID_BASE
        if bool(mine.any()):
            keys[mine], values[mine] = self.extra.fetch(ids[mine] - EXTRA_ID_BASE)
        if bool((~mine).any()):
            k, v = self.primary.fetch(ids[~mine])  # type: ignore[union-attr]
            keys[~mine], values[~mine] = k.to(keys), v.to(values)
        return keys, values

    def touch(self, ids: Tensor) -> None:
        ids = torch.as_tensor(ids)
        stored = ids[ids < EXTRA_ID_BASE]
        if self.primary is not None and stored.numel():
            self.primary.touch(stored)

    def add(self, keys: Tensor, values: Tensor, gates: Tensor) -> Tensor:
        raise TypeError("a read-through view is read-only: write to the persistent bank")

    def update(self, ids: Tensor, keys: Tensor, values: Tensor) -> None:
        raise TypeError("a read-through view is read-only: write to the persistent bank")

    def remove(self, ids: Tensor) -> None:
        raise TypeError("a read-through view is read-only: write to the persistent bank")

    def stats(self) -> SlotStats:
        raise TypeError("a read-through view has no eviction statistics")
