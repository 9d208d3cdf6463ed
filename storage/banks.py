"""Vector banks: SQL rows + a change log, mirrored into a :class:`VectorIndex`.

SQL is the source of truth. Every write to a bank's rows appends to ``change_log`` in the
same transaction through :func:`log_changes`, which bumps ``vector_banks.last_seq`` under
that row's lock: a bank's sequence numbers are gapless and commit in order, so a reader
that has applied everything up to ``seq`` can never miss an earlier one.

:class:`BankIndex` keeps an in-process FAISS index equal to SQL by replaying the log from
its ``applied_seq`` (:meth:`BankIndex.sync`, called before every search), and can be
rebuilt from the rows at any time (:meth:`BankIndex.rebuild`). With an ``index_path`` it
saves the index with its sequence number and, in a new process, loads it and catches up
from that number instead of rebuilding. Applying is idempotent (an add of a present id
replaces it, a remove of an absent id is a no-op), so replaying an overlap is harmless.
One lock per bank serialises index writes and searches in the process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.metrics import StorageMetrics
from storage.models import ChangeLog, VectorBank
from storage.vector_index import IndexParams, VectorIndex

log = logging.getLogger(__name__)

# loader(session, bank_id, ids or None for all) -> (ids (n,), vectors (n, dim), extra)
Loader = Callable[[Session, int, list[int] | None], tuple[np.ndarray, np.ndarray, dict]]


def log_changes(s: Session, bank_id: int, changes: Iterable[tuple[int, str]]) -> int:
    """Append (item_id, op) rows to the bank's change log; returns the new head seq.

    Must run inside the writing transaction; the UPDATE takes the bank row's lock.
    """
    changes = list(changes)
    if not changes:
        return 0
    head = s.execute(
        update(VectorBank)
        .where(VectorBank.id == bank_id)
        .values(last_seq=VectorBank.last_seq + len(changes))
        .returning(VectorBank.last_seq)
    ).scalar_one()
    first = head - len(changes) + 1
    s.add_all(
        ChangeLog(bank_id=bank_id, seq=first + i, item_id=item, op=op)
        for i, (item, op) in enumerate(changes)
    )
    return int(head)


def bump_clock(s: Session, bank_id: int) -> int:
    """Advance and return the bank's logical clock (slot created / last read ticks)."""
    return int(
        s.execute(
            update(VectorBank)
            .where(VectorBank.id == bank_id)
            .values(clock=VectorBank.clock + 1)
            .returning(VectorBank.clock)
        ).scalar_one()
    )


class BankIndex:
    """The in-process index of one bank, kept equal to SQL; see the module docstring.

    ``on_apply(ids_upserted, extra, ids_removed)`` lets the owner mirror more per-item data
    (slot values) from the same loads.
    """

    def __init__(
        self,
        db: Database,
        bank_id: int,
        dim: int,
        loader: Loader,
        metrics: StorageMetrics,
        *,
        kind: str,
        params: IndexParams | None = None,
        index_path: Path | None = None,
        on_apply: Callable[[np.ndarray, dict, np.ndarray], None] | None = None,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self.db, self.bank_id, self.dim, self.loader = db, bank_id, dim, loader
        self.metrics, self.kind, self.params = metrics, kind, params
        self.index_path, self.on_apply, self.on_reset = index_path, on_apply, on_reset
        self.lock = threading.RLock()
        self.index = VectorIndex(dim, params)
        self.applied_seq = 0
        self._opened = False

    def open(self) -> None:
        """Load the saved index and catch up from its seq, or rebuild from SQL."""
        with self.lock:
            if self._opened:
                return
            self._opened = True
            if self.index_path is not None and self.index_path.exists():
                try:
                    index, meta = VectorIndex.load(self.index_path, self.params)
                    if meta.get("bank_id") == self.bank_id and index.dim == self.dim:
                        self.index, self.applied_seq = index, meta["applied_seq"]
                        if self.on_reset is not None:
                            self.on_reset()
                        self._mirror_all_extra()
                        self.sync()
                        return
                except Exception as exc:  # a damaged file only costs a rebuild
                    log.warning("index file %s unusable (%s); rebuilding", self.index_path, exc)
            self.rebuild()

    def rebuild(self) -> None:
        """Replace the index with one built from the bank's rows, then catch up."""
        with self.lock:
            with self.db.read() as s:
                head = s.scalar(select(VectorBank.last_seq).where(VectorBank.id == self.bank_id))
                ids, vecs, extra = self.loader(s, self.bank_id, None)
            index = VectorIndex(self.dim, self.params)
            index.upsert(ids, vecs)
            index.compact()  # pick the kind for the final size in one build
            self.index, self.applied_seq = index, int(head or 0)
            if self.on_reset is not None:
                self.on_reset()
            if self.on_apply is not None:
                self.on_apply(ids, extra, np.empty(0, np.int64))
            self.metrics.index_rebuilds.labels(self.kind).inc()
            self.sync()

    def _mirror_all_extra(self) -> None:
        if self.on_apply is None:
            return
        with self.db.read() as s:
            ids, _, extra = self.loader(s, self.bank_id, self.index.ids().tolist())
        self.on_apply(ids, extra, np.empty(0, np.int64))

    def sync(self, session: Session | None = None) -> int:
        """Apply change-log entries after ``applied_seq``; returns how many were applied.

        ``session``: read inside the caller's transaction instead of a new one.
        """
        with self.lock:
            with self._reading(session) as s:
                head = s.scalar(select(VectorBank.last_seq).where(VectorBank.id == self.bank_id))
                if head is None:  # the bank itself was deleted (tenant deleted): empty it
                    self._clear()
                    return 0
                if head == self.applied_seq:
                    return 0
                rows = s.execute(
                    select(ChangeLog.seq, ChangeLog.item_id, ChangeLog.op)
                    .where(ChangeLog.bank_id == self.bank_id, ChangeLog.seq > self.applied_seq)
                    .order_by(ChangeLog.seq)
                ).all()
                if not rows:
                    return 0
                final: dict[int, str] = {}
                for _, item, op in rows:  # the last op of an item wins
                    final[item] = op
                wanted = [i for i, op in final.items() if op != "remove"]
                ids, vecs, extra = (
                    self.loader(s, self.bank_id, wanted)
                    if wanted
                    else (np.empty(0, np.int64), np.empty((0, self.dim), np.float32), {})
                )
            gone = np.array(sorted(set(final) - set(ids.tolist())), dtype=np.int64)
            self.index.remove(gone)
            self.index.upsert(ids, vecs)
            if self.on_apply is not None:
                self.on_apply(ids, extra, gone)
            self.applied_seq = int(rows[-1][0])
            return len(rows)

    @contextlib.contextmanager
    def _reading(self, session: Session | None):
        if session is not None:
            yield session
        else:
            with self.db.read() as s:
                yield s

    def search(
        self, queries: object, k: int, *, sync: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product over the live items (after catching up with SQL)."""
        with self.lock:
            if sync:
                self.sync()
            return self.index.search(queries, k)

    def _clear(self) -> None:
        gone = self.index.ids()
        self.index = VectorIndex(self.dim, self.params)
        if self.on_apply is not None and gone.size:
            self.on_apply(np.empty(0, np.int64), {"values": []}, gone)

    def save(self) -> None:
        """Persist the index with its seq (no-op without ``index_path``)."""
        if self.index_path is None:
            return
        with self.lock:
            self.index.save(
                self.index_path, {"bank_id": self.bank_id, "applied_seq": self.applied_seq}
            )
