"""Recurrent-state snapshots at passage boundaries (the RAG prefill cache).

A snapshot is the state after feeding a chain of passages, in order, from a start state:
keyed by (tenant, model fingerprint, hash of the start state, hash of the passage chain).
:meth:`SnapshotManager.longest_prefix` finds the longest cached prefix of a chain, so a
prefill resumes from there.

Snapshots are states, stored like session states (:mod:`storage.state_codec`: compressed,
optionally bf16, checksummed frames, inline or one ``snapshot_chunks`` row per frame).
Each tenant's snapshots are bounded by ``StateConfig.snapshot_max_bytes`` of stored bytes:
a write that goes over it prunes the least recently used ones in the same transaction.
Lookups read metadata first and load one blob: the longest prefix's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.blob_rows import fetch_frames, insert_frames
from storage.config import StateConfig
from storage.db import Database
from storage.errors import CorruptStateError
from storage.metrics import StorageMetrics
from storage.models import SnapshotChunk, StateSnapshot, utcnow
from storage.state_codec import decode, encode, verify

_CHUNKS = SnapshotChunk.__table__


def chain_hash(passage_ids: Sequence[int | str]) -> str:
    """Hash of an ordered passage chain (the empty chain has a hash too)."""
    h = hashlib.blake2b(digest_size=32)
    for p in passage_ids:
        h.update(str(p).encode() + b"\x00")
    return h.hexdigest()


def state_hash(blob: bytes) -> str:
    """Hash of a start state's bytes (use ``"empty"`` for the model's zero state): SHA-256."""
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    fingerprint: str
    start_hash: str
    passage_ids: list
    blob: bytes
    position: int


class SnapshotManager:
    """Store and find snapshots; every call takes the tenant."""

    def __init__(
        self, db: Database, metrics: StorageMetrics, config: StateConfig | None = None
    ) -> None:
        self.db, self.metrics = db, metrics
        self.config = config or StateConfig()

    def put(
        self,
        tenant_id: str,
        fingerprint: str,
        start_hash: str,
        passage_ids: Sequence[int | str],
        blob: bytes,
        position: int,
    ) -> None:
        """Store a snapshot (an identical key already stored is kept), then keep the
        tenant's snapshots within the byte budget. One larger than the budget is not kept.
        """
        enc = encode(blob, self.config.codec)
        budget = self.config.snapshot_max_bytes
        if budget and enc.stored_size > budget:
            return
        inline = len(enc.frames) == 1
        row = StateSnapshot(
            tenant_id=tenant_id,
            fingerprint=fingerprint,
            start_hash=start_hash,
            chain_hash=chain_hash(passage_ids),
            passage_ids=list(passage_ids),
            blob=enc.frames[0] if inline else b"",
            checksum=enc.checksum,
            position=position,
            created_at=utcnow(),
            used_at=utcnow(),
            codec=None if enc.codec.get("fr") is None else enc.codec,
            n_chunks=0 if inline else len(enc.frames),
            size=len(enc.blob),
            stored_size=enc.stored_size,
        )
        try:
            with self.db.write() as s:
                s.add(row)
                s.flush()
                if not inline:
                    insert_frames(s, _CHUNKS, {"snapshot_id": row.id}, enc.frames, tenant_id)
                if budget:
                    self._within_budget(s, tenant_id, budget)
        except IntegrityError:
            pass  # same key: same state, by construction

    @staticmethod
    def _within_budget(s: Session, tenant_id: str, budget: int) -> int:
        """Delete the tenant's least recently used snapshots beyond ``budget`` bytes."""
        mine = StateSnapshot.tenant_id == tenant_id
        total = s.scalar(select(func.coalesce(func.sum(StateSnapshot.stored_size), 0)).where(mine))
        if int(total or 0) <= budget:
            return 0
        rows = s.execute(
            select(StateSnapshot.id, StateSnapshot.stored_size)
            .where(mine)
            .order_by(StateSnapshot.used_at.desc(), StateSnapshot.id.desc())
        ).all()
        kept, doomed = 0, []
        for sid, size in rows:
            kept += int(size)
            if kept > budget:
                doomed.append(sid)
        s.execute(delete(StateSnapshot).where(mine, StateSnapshot.id.in_(doomed)))
        return len(doomed)

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
        cols = (StateSnapshot.id, StateSnapshot.chain_hash)
        with self.db.read() as s:
            found = s.execute(
                select(*cols).where(
                    StateSnapshot.tenant_id == tenant_id,
                    StateSnapshot.fingerprint == fingerprint,
                    StateSnapshot.start_hash == start_hash,
                    StateSnapshot.chain_hash.in_(hashes),
                )
            ).all()
            if not found:
                return None
            rank = {h: i for i, h in enumerate(hashes)}
            best_id = max(found, key=lambda r: rank[r[1]])[0]
            best = s.get(StateSnapshot, best_id)
            if best is None:  # pruned between the two reads: a miss
                return None
            frames = [bytes(best.blob)]
            if best.n_chunks:
                frames = fetch_frames(s, _CHUNKS, {"snapshot_id": best.id})
            try:
                if len(frames) != max(1, best.n_chunks) or not verify(frames, best.checksum):
                    raise ValueError("checksum mismatch")
                blob = decode(frames, best.codec, self.config.codec.threads)
            except ValueError as exc:
                self.metrics.corrupt_blobs.labels("snapshot").inc()
                raise CorruptStateError(f"snapshot {best.id}", "sql") from exc
            snap = Snapshot(
                best.fingerprint, best.start_hash, list(best.passage_ids), blob, best.position
            )
        with self.db.write() as s:
            s.execute(
                update(StateSnapshot).where(StateSnapshot.id == best_id).values(used_at=utcnow())
            )
        return len(snap.passage_ids), snap

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

    def stored_bytes(self, tenant_id: str) -> int:
        """Stored bytes of the tenant's snapshots (what the budget bounds)."""
        with self.db.read() as s:
            total = s.scalar(
                select(func.coalesce(func.sum(StateSnapshot.stored_size), 0)).where(
                    StateSnapshot.tenant_id == tenant_id
                )
            )
        return int(total or 0)
