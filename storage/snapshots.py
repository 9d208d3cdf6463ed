"""Recurrent-state snapshots at passage boundaries (the RAG prefill cache).

A snapshot is the state after feeding a chain of passages, in order, from a start state:
keyed by (tenant, model fingerprint, hash of the start state, hash of the passage chain).
:meth:`SnapshotManager.longest_prefix` finds the longest cached prefix of a chain, so a
prefill resumes from there. Blobs are checksummed like session states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import CorruptStateError
from storage.metrics import StorageMetrics
from storage.models import StateSnapshot, utcnow
from storage.states import checksum


def chain_hash(passage_ids: Sequence[int | str]) -> str:
    """Hash of an ordered passage chain (the empty chain has a hash too)."""
    h = hashlib.blake2b(digest_size=32)
    for p in passage_ids:
        h.update(str(p).encode() + b"\x00")
    return h.hexdigest()


def state_hash(blob: bytes) -> str:
    """Hash of a start state's bytes (use ``"empty"`` for the model's zero state)."""
    return checksum(blob)


@dataclass(frozen=True)
class Snapshot:
    fingerprint: str
    start_hash: str
    passage_ids: list
    blob: bytes
    position: int


class SnapshotManager:
    """Store and find snapshots; every call takes the tenant."""

    def __init__(self, db: Database, metrics: StorageMetrics) -> None:
        self.db, self.metrics = db, metrics

    def put(
        self,
        tenant_id: str,
        fingerprint: str,
        start_hash: str,
        passage_ids: Sequence[int | str],
        blob: bytes,
        position: int,
    ) -> None:
        """Store a snapshot (an identical key already stored is kept)."""
        row = StateSnapshot(
            tenant_id=tenant_id,
            fingerprint=fingerprint,
            start_hash=start_hash,
            chain_hash=chain_hash(passage_ids),
            passage_ids=list(passage_ids),
            blob=bytes(blob),
            checksum=checksum(bytes(blob)),
            position=position,
            created_at=utcnow(),
            used_at=utcnow(),
        )
        try:
            with self.db.write() as s:
                s.add(row)
        except IntegrityError:
            pass  # same key: same state, by construction

    def get(
        self, tenant_id: str, fingerprint: str, start_hash: str, passage_ids: Sequence[int | str]
    ) -> Snapshot | None:
        """The exact snapshot or None; :class:`CorruptStateError` on a bad checksum."""
        got = self._find(tenant_id, fingerprint, start_hash, [chain_hash(passage_ids)])
        return got[1] if got else None

    def longest_prefix(
        self, tenant_id: str, fingerprint: str, start_hash: str, passage_ids: Sequence[int | str]
    ) -> tuple[int, Snapshot] | None:
        """(n, snapshot after the first n passages) for the largest cached n ≥ 1, or None."""
        hashes = [chain_hash(passage_ids[: n + 1]) for n in range(len(passage_ids))]
        return self._find(tenant_id, fingerprint, start_hash, hashes)

    def _find(
        self, tenant_id: str, fingerprint: str, start_hash: str, hashes: list[str]
    ) -> tuple[int, Snapshot] | None:
        if not hashes:
            return None
        with self.db.read() as s:
            rows = s.scalars(
                select(StateSnapshot).where(
                    StateSnapshot.tenant_id == tenant_id,
                    StateSnapshot.fingerprint == fingerprint,
                    StateSnapshot.start_hash == start_hash,
                    StateSnapshot.chain_hash.in_(hashes),
                )
            ).all()
        if not rows:
            return None
        rank = {h: i for i, h in enumerate(hashes)}
        best = max(rows, key=lambda r: rank[r.chain_hash])
        if checksum(best.blob) != best.checksum:
            self.metrics.corrupt_blobs.labels("snapshot").inc()
            raise CorruptStateError(f"snapshot {best.id}", "sql")
        with self.db.write() as s:
            s.execute(
                update(StateSnapshot).where(StateSnapshot.id == best.id).values(used_at=utcnow())
            )
        snap = Snapshot(
            best.fingerprint,
            best.start_hash,
            list(best.passage_ids),
            bytes(best.blob),
            best.position,
        )
        return len(best.passage_ids), snap

    def prune(self, tenant_id: str, keep: int) -> int:
        """Keep the tenant's ``keep`` most recently used snapshots; returns how many went."""
        with self.db.write() as s:
            keep_ids = s.scalars(
                select(StateSnapshot.id)
                .where(StateSnapshot.tenant_id == tenant_id)
                .order_by(StateSnapshot.used_at.desc())
                .limit(keep)
            ).all()
            res = s.execute(
                delete(StateSnapshot).where(
                    StateSnapshot.tenant_id == tenant_id, StateSnapshot.id.not_in(keep_ids)
                )
            )
            return res.rowcount
