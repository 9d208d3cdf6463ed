"""Recurrent states: write-through Redis (or LRU) over SQL, versioned, checksummed.

A state is opaque bytes to storage (the model's ``RecurrentState.to_bytes()``) plus
metadata: model fingerprint, token position, version, and a SHA-256 checksum computed here.

- :meth:`StateStore.save` is a compare-and-set on the session's version: it succeeds only
  if the session is still at ``expected_version``, bumps it, and stores the blob in SQL in
  the same transaction. Only then is the hot tier updated (an acknowledged state is
  durable in SQL). A stale writer gets :class:`StaleVersion`, never a silent overwrite.
- :meth:`StateStore.load` reads the hot tier, then SQL, then repopulates the hot tier.
  A checksum mismatch in the hot tier is counted and that copy discarded; in SQL it
  raises :class:`CorruptStateError` naming the session.
- With Redis, a small in-process tier of recently used states sits in front of it: a
  local copy is returned only if Redis still holds the *same version* (one GET of a few
  bytes instead of the whole blob and its checksum). Versions are unique per session
  (compare-and-set), so a matching version means identical bytes.
- Redis failures are logged and counted (``cache_fallbacks``) and the call goes on on SQL.
  Keys whose invalidation could not reach Redis are remembered and deleted once it is back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from storage.cache import CacheUnavailable, HotCache, RedisCache
from storage.db import Database
from storage.errors import CorruptStateError, FingerprintMismatch, NotFound, StaleVersion
from storage.metrics import StorageMetrics
from storage.models import ChatSession, SessionState, utcnow

log = logging.getLogger(__name__)
_MAGIC = b"MST1"


def checksum(blob: bytes) -> str:
    """SHA-256 hex digest of ``blob`` (hardware-accelerated on x86-64, faster than BLAKE2b)."""
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class StoredState:
    """A session's state as stored."""

    session_id: str
    version: int
    blob: bytes
    checksum: str
    fingerprint: str
    position: int
    tier: str = ""  # which tier answered a load: local | redis | lru | sql ("" when saved)


@dataclass(frozen=True)
class StateMeta:
    """A stored state's metadata, read without its blob."""

    session_id: str
    version: int
    fingerprint: str
    position: int
    size: int
    updated_at: datetime


def encode_hot(state: StoredState) -> bytes:
    """Hot-tier encoding: magic, header length, JSON header, blob."""
    head = json.dumps(
        {
            "s": state.session_id,
            "v": state.version,
            "c": state.checksum,
            "f": state.fingerprint,
            "p": state.position,
        }
    ).encode()
    return _MAGIC + struct.pack(">I", len(head)) + head + state.blob


def decode_hot(data: bytes) -> StoredState:
    """Inverse of :func:`encode_hot`; raises ValueError on a malformed value."""
    if data[:4] != _MAGIC:
        raise ValueError("bad magic")
    (n,) = struct.unpack(">I", data[4:8])
    head = json.loads(data[8 : 8 + n])
    return StoredState(head["s"], head["v"], data[8 + n :], head["c"], head["f"], head["p"])


class LocalStates:
    """In-process LRU of verified :class:`StoredState` objects, bounded by blob bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredState] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> StoredState | None:
        with self._lock:
            state = self._items.get(key)
            if state is not None:
                self._items.move_to_end(key)
            return state

    def put(self, key: str, state: StoredState) -> None:
        if len(state.blob) > self.max_bytes:
            return
        with self._lock:
            old = self._items.get(key)
            if old is not None and old.version > state.version:
                return
            self._drop(key)
            self._items[key] = state
            self._bytes += len(state.blob)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def drop(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old.blob)


class StateStore:
    """Session states over a hot cache and SQL; every call takes the tenant."""

    def __init__(
        self,
        db: Database,
        cache: HotCache,
        metrics: StorageMetrics,
        ttl_s: float = 3600.0,
        local_bytes: int = 64 * 2**20,
    ) -> None:
        self.db, self.cache, self.metrics, self.ttl_s = db, cache, metrics, ttl_s
        versioned = isinstance(cache, RedisCache) and local_bytes > 0
        self.local = LocalStates(local_bytes) if versioned else None
        self._pending_deletes: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _key(tenant_id: str, session_id: str) -> str:
        return f"state:{tenant_id}:{session_id}"

    def save(
        self,
        tenant_id: str,
        session_id: str,
        blob: bytes,
        *,
        fingerprint: str,
        position: int,
        expected_version: int,
    ) -> StoredState:
        """Store ``blob`` as version ``expected_version + 1``; raises StaleVersion/NotFound."""
        state = self.prepare(session_id, blob, fingerprint, position, expected_version)
        with self.db.write() as s:
            self.compare_and_set(s, tenant_id, state)
        self.committed(tenant_id, state)
        return state

    @staticmethod
    def prepare(
        session_id: str, blob: bytes, fingerprint: str, position: int, expected_version: int
    ) -> StoredState:
        """The state to write as version ``expected_version + 1`` (checksum computed here)."""
        blob = bytes(blob)
        return StoredState(
            session_id, expected_version + 1, blob, checksum(blob), fingerprint, position
        )

    def compare_and_set(self, s: Session, tenant_id: str, state: StoredState) -> None:
        """Inside the caller's write transaction ``s``: bump the version, write the blob.

        ``UPDATE sessions SET version = v+1 WHERE id AND tenant AND version = v`` (which
        also takes the session row's lock until ``s`` commits), then the blob row. Zero
        rows updated raises :class:`StaleVersion` (the hot copy is invalidated, so the
        retry reads SQL) or :class:`NotFound`; the caller's transaction then rolls back.
        Call :meth:`committed` after the commit.
        """
        session_id, expected_version = state.session_id, state.version - 1
        res = s.execute(
            update(ChatSession)
            .where(ChatSession.id == session_id, ChatSession.tenant_id == tenant_id)
            .where(ChatSession.version == expected_version)
            .values(version=state.version, updated_at=utcnow())
        )
        if res.rowcount != 1:
            current = s.scalar(
                select(ChatSession.version).where(
                    ChatSession.id == session_id, ChatSession.tenant_id == tenant_id
                )
            )
            if current is None:
                raise NotFound(f"session {session_id} not found")
            self.metrics.conflicts.labels("stale_version").inc()
            self._invalidate(tenant_id, session_id)  # a stale hot copy may be why
            raise StaleVersion(session_id, expected_version, current)
        # never read the old blob back: UPDATE, or INSERT when there is none yet (the
        # session row lock / SQLite's write lock keeps this race-free)
        values = {
            "tenant_id": tenant_id,
            "version": state.version,
            "blob": state.blob,
            "checksum": state.checksum,
            "fingerprint": state.fingerprint,
            "position": state.position,
            "size": len(state.blob),
            "updated_at": utcnow(),
        }
        res = s.execute(
            update(SessionState).where(SessionState.session_id == session_id).values(values)
        )
        if res.rowcount == 0:
            s.execute(insert(SessionState).values(session_id=session_id, **values))

    def committed(self, tenant_id: str, state: StoredState) -> None:
        """After the commit of :meth:`compare_and_set`: count it, update the hot tiers."""
        self.metrics.state_writes.inc()
        self._remember(tenant_id, state)
        self._put_hot(tenant_id, state)

    def load(
        self, tenant_id: str, session_id: str, *, fingerprint: str | None = None
    ) -> StoredState | None:
        """The newest state, or None when the session has none; NotFound for no session.

        ``tier`` of the result names the tier that answered: ``local`` (the in-process
        copy in front of Redis), ``redis``, ``lru`` (no Redis configured) or ``sql``.
        """
        self._flush_pending()
        tier = "local"
        state = self._get_local(tenant_id, session_id)
        if state is None:
            tier = self.cache.name
            state = self._get_hot(tenant_id, session_id)
            if state is not None:
                self._remember(tenant_id, state)
        if state is None:
            tier = "sql"
            state = self._get_sql(tenant_id, session_id)
            if state is None:
                self.metrics.state_reads.labels("miss").inc()
                return None
            self._remember(tenant_id, state)
            self._put_hot(tenant_id, state)
        self.metrics.state_reads.labels(tier).inc()
        if fingerprint is not None and state.fingerprint != fingerprint:
            raise FingerprintMismatch(session_id, state.fingerprint, fingerprint)
        return replace(state, tier=tier)

    def meta(self, tenant_id: str, session_id: str) -> StateMeta | None:
        """Version, position, fingerprint and size of the stored state, without the blob.

        One SQL row read (the blob column is not selected); None when the session has no
        state yet; NotFound for an unknown or another tenant's session. Not a state load:
        no ``state_reads`` counter moves.
        """
        cols = (
            SessionState.version,
            SessionState.fingerprint,
            SessionState.position,
            SessionState.size,
            SessionState.updated_at,
        )
        with self.db.read() as s:
            row = s.execute(
                select(*cols).where(
                    SessionState.session_id == session_id, SessionState.tenant_id == tenant_id
                )
            ).one_or_none()
            if row is None:
                self.version(tenant_id, session_id)  # NotFound for no such session
                return None
        return StateMeta(session_id, int(row[0]), row[1], int(row[2]), int(row[3]), row[4])

    def positions(self, session_ids: list[str]) -> dict[str, int]:
        """Token position of each session's stored state, in one SQL read (no blobs).

        Sessions without a state are absent from the result (their position is 0).
        """
        if not session_ids:
            return {}
        query = select(SessionState.session_id, SessionState.position).where(
            SessionState.session_id.in_(session_ids)
        )
        with self.db.read() as s:
            return {sid: int(pos) for sid, pos in s.execute(query)}

    def version(self, tenant_id: str, session_id: str) -> int:
        """The session's current version from SQL; NotFound for another tenant's session."""
        with self.db.read() as s:
            v = s.scalar(
                select(ChatSession.version).where(
                    ChatSession.id == session_id, ChatSession.tenant_id == tenant_id
                )
            )
        if v is None:
            raise NotFound(f"session {session_id} not found")
        return int(v)

    def evict_hot(self, tenant_id: str, session_id: str) -> None:
        """Drop the hot copy (e.g. after deleting the session)."""
        self._invalidate(tenant_id, session_id)

    # ---- tiers ---------------------------------------------------------------------
    def _get_local(self, tenant_id: str, session_id: str) -> StoredState | None:
        if self.local is None:
            return None
        key = self._key(tenant_id, session_id)
        state = self.local.get(key)
        if state is None:
            return None
        try:
            current = self.cache.version(key)  # type: ignore[attr-defined]
        except CacheUnavailable:
            return None  # cannot prove it is current; the next tier counts the fallback
        if current != state.version:
            self.local.drop(key)
            return None
        return state

    def _remember(self, tenant_id: str, state: StoredState) -> None:
        if self.local is not None:
            self.local.put(self._key(tenant_id, state.session_id), state)

    def _get_hot(self, tenant_id: str, session_id: str) -> StoredState | None:
        key = self._key(tenant_id, session_id)
        try:
            data = self.cache.get(key)
        except CacheUnavailable as exc:
            self._fallback("get", exc)
            return None
        if data is None:
            return None
        try:
            state = decode_hot(data)
            ok = state.session_id == session_id and checksum(state.blob) == state.checksum
        except (ValueError, KeyError, json.JSONDecodeError):
            ok = False
        if not ok:
            log.error("session %s: hot copy fails its checksum; discarded", session_id)
            self.metrics.corrupt_blobs.labels(self.cache.name).inc()
            self._invalidate(tenant_id, session_id)
            return None
        return state

    def _get_sql(self, tenant_id: str, session_id: str) -> StoredState | None:
        with self.db.read() as s:
            row = s.scalar(
                select(SessionState).where(
                    SessionState.session_id == session_id, SessionState.tenant_id == tenant_id
                )
            )
            if row is None:
                exists = s.scalar(
                    select(ChatSession.id).where(
                        ChatSession.id == session_id, ChatSession.tenant_id == tenant_id
                    )
                )
                if exists is None:
                    raise NotFound(f"session {session_id} not found")
                return None
            state = StoredState(
                session_id,
                row.version,
                bytes(row.blob),
                row.checksum,
                row.fingerprint,
                row.position,
            )
        if checksum(state.blob) != state.checksum:
            self.metrics.corrupt_blobs.labels("sql").inc()
            raise CorruptStateError(session_id, "sql")
        return state

    def _put_hot(self, tenant_id: str, state: StoredState) -> None:
        try:
            self.cache.put(
                self._key(tenant_id, state.session_id),
                encode_hot(state),
                state.version,
                self.ttl_s,
            )
        except CacheUnavailable as exc:
            self._fallback("put", exc)
            with self._lock:  # an older hot copy may survive the outage: delete it later
                self._pending_deletes.add(self._key(tenant_id, state.session_id))

    def _invalidate(self, tenant_id: str, session_id: str) -> None:
        key = self._key(tenant_id, session_id)
        if self.local is not None:
            self.local.drop(key)
        try:
            self.cache.delete(key)
        except CacheUnavailable as exc:
            self._fallback("delete", exc)
            with self._lock:
                self._pending_deletes.add(key)

    def _flush_pending(self) -> None:
        if not self._pending_deletes:
            return
        with self._lock:
            keys, self._pending_deletes = list(self._pending_deletes), set()
        for i, key in enumerate(keys):
            try:
                self.cache.delete(key)
            except CacheUnavailable:
                with self._lock:
                    self._pending_deletes.update(keys[i:])
                return

    def _fallback(self, op: str, exc: Exception) -> None:
        log.warning("hot cache %s failed (%s); using SQL", op, exc)
        self.metrics.cache_fallbacks.labels(op).inc()
