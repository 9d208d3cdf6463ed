"""Recurrent states: write-through Redis (or LRU) over SQL, versioned, checksummed, chunked.

A state is opaque bytes to storage (the model's ``RecurrentState.to_bytes()``) plus
metadata: model fingerprint, token position and version. :mod:`storage.state_codec`
turns it into stored *frames* (raw, or zstd over byte planes, optionally in bf16) and an
XXH3-128 checksum over them.

- :meth:`StateStore.save` is a compare-and-set on the session's version: it succeeds only
  if the session is still at ``expected_version``, bumps it, and stores the frames in SQL
  in the same transaction: inline in the state row when there is one frame, else one
  ``state_chunks`` row per frame; the chunks of every other version are deleted in that
  transaction (only the latest state per session is kept). Only then is the hot tier
  updated (an acknowledged state is durable in SQL). A stale writer gets
  :class:`StaleVersion`, never a silent overwrite. A large state's frames are written to
  Redis while SQL commits, and made visible only after the commit.
- :meth:`StateStore.load` reads the hot tier, then SQL, then repopulates the hot tier.
  A checksum mismatch in the hot tier is counted and that copy discarded; in SQL it
  raises :class:`CorruptStateError` naming the session. Rows written before checksums
  were XXH3 (bare SHA-256 hex) are still verified and read.
- With Redis, a small in-process tier of recently used states sits in front of it: a
  local copy is returned only if Redis still holds the *same version* (one GET of a few
  bytes instead of the whole blob and its checksum). Versions are unique per session
  (compare-and-set), so a matching version means identical bytes.
- Redis failures are logged and counted (``cache_fallbacks``) and the call goes on on SQL.
  Keys whose invalidation could not reach Redis are remembered and deleted once it is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.cache import CacheUnavailable, HotCache, RedisCache
from storage.config import StateConfig
from storage.db import Database
from storage.errors import CorruptStateError, FingerprintMismatch, NotFound, StaleVersion
from storage.metrics import StorageMetrics
from storage.models import ChatSession, SessionState
from storage.state_codec import (
    RAW_CODEC,
    Encoded,
    checksum,
    decode,
    describe,
    finish,
    frames,
    plan,
    verify,
)
from storage.state_records import (
    LocalStates,
    StateMeta,
    StoredState,
    decode_hot,
    decode_parts,
    encode_hot,
)
from storage.state_rows import RowHead, bump_version, read_rows, write_chunks, write_row

__all__ = ["StateStore", "StoredState", "StateMeta", "checksum", "decode_hot", "encode_hot"]

log = logging.getLogger(__name__)


class StateStore:
    """Session states over a hot cache and SQL; every call takes the tenant.

    ``config`` (:class:`storage.config.StateConfig`) sets the codec and the tiers' sizes;
    ``ttl_s`` and ``local_bytes``, when given, override its fields of the same meaning.
    """

    def __init__(
        self,
        db: Database,
        cache: HotCache,
        metrics: StorageMetrics,
        ttl_s: float | None = None,
        local_bytes: int | None = None,
        config: StateConfig | None = None,
    ) -> None:
        config = config or StateConfig()
        if ttl_s is not None:
            config = replace(config, ttl_s=ttl_s)
        if local_bytes is not None:
            config = replace(config, local_bytes=local_bytes)
        self.config, self.codec = config, config.codec
        self.db, self.cache, self.metrics, self.ttl_s = db, cache, metrics, config.ttl_s
        versioned = isinstance(cache, RedisCache) and config.local_bytes > 0
        self.local = LocalStates(config.local_bytes) if versioned else None
        self._stager = ThreadPoolExecutor(1, thread_name_prefix="state-stage")
        self._staged: dict[tuple[str, int, str], Future] = {}  # (key, version, checksum)
        self._refills: dict[str, Future] = {}  # key -> a refill from SQL in flight
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
        state = None
        try:
            with self.db.write() as s:
                state = self.write(
                    s,
                    tenant_id,
                    session_id,
                    blob,
                    fingerprint=fingerprint,
                    position=position,
                    expected_version=expected_version,
                )
        except BaseException:
            if state is not None:
                self.abandon(tenant_id, state)
            raise
        self.committed(tenant_id, state)
        return state

    def write(
        self,
        s: Session,
        tenant_id: str,
        session_id: str,
        blob: bytes,
        *,
        fingerprint: str,
        position: int,
        expected_version: int,
    ) -> StoredState:
        """Inside the caller's write transaction ``s``: bump the version, write the frames.

        The compare-and-set on the session's version comes first (it also locks the
        session row until ``s`` commits), then the frames and the state row; the chunks of
        every other version are deleted. A lost compare-and-set raises
        :class:`StaleVersion` (the hot copy is invalidated, so the retry reads SQL) or
        :class:`NotFound`; the caller's transaction then rolls back. On Postgres the
        frames are compressed while the earlier ones are being sent; on SQLite, whose write
        lock is database-wide, before the first statement. With Redis, a large state's
        frames start going to Redis once encoded (invisible until :meth:`committed`). After
        the commit call :meth:`committed`; if the transaction fails, :meth:`abandon`.
        """
        fp = plan(blob, self.codec)
        ready = list(frames(fp, self.codec)) if self.db.sqlite else None
        current = bump_version(s, tenant_id, session_id, expected_version)
        if current is not None:
            self.metrics.conflicts.labels("stale_version").inc()
            self._invalidate(tenant_id, session_id)  # a stale hot copy may be why
            raise StaleVersion(session_id, expected_version, current)
        version = expected_version + 1
        if len(fp.pieces) == 1:
            enc = finish(fp, ready or list(frames(fp, self.codec)))
        else:
            got = frames(fp, self.codec) if ready is None else ready
            enc = finish(fp, write_chunks(s, tenant_id, session_id, version, got))
        inline = len(enc.frames) == 1
        head = RowHead(version, enc.checksum, fingerprint, position, None if fp.raw else enc.codec)
        write_row(
            s,
            tenant_id,
            session_id,
            head,
            inline=enc.frames[0] if inline else None,
            n_chunks=0 if inline else len(enc.frames),
            size=len(enc.blob),
            stored_size=enc.stored_size,
        )
        state = StoredState(
            session_id,
            version,
            enc.blob,
            enc.checksum,
            fingerprint,
            position,
            codec=describe(enc.codec),
            stored_size=enc.stored_size,
            encoded=enc,
        )
        self._stage(tenant_id, state)
        return state

    def _stage(self, tenant_id: str, state: StoredState) -> None:
        """Start writing a large state's frames to Redis (made visible by :meth:`committed`)."""
        if not isinstance(self.cache, RedisCache):
            return
        parts = encode_hot(state)
        if self.cache.is_split(parts):
            key = self._key(tenant_id, state.session_id)
            job = self._stager.submit(self.cache.stage, key, parts, state.version, self.ttl_s)
            with self._lock:
                self._staged[(key, state.version, state.checksum)] = job

    def committed(self, tenant_id: str, state: StoredState) -> None:
        """After the commit of :meth:`write`: count it, update the hot tiers."""
        self.metrics.state_writes.inc()
        self._remember(tenant_id, state)
        self._put_hot(tenant_id, state, staged=self._wait_staged(tenant_id, state))

    def abandon(self, tenant_id: str, state: StoredState) -> None:
        """The write of ``state`` failed: delete frames staged in Redis for it."""
        if self._wait_staged(tenant_id, state) and isinstance(self.cache, RedisCache):
            key = self._key(tenant_id, state.session_id)
            with contextlib.suppress(CacheUnavailable):  # else they expire with the TTL
                self.cache.unstage(key, encode_hot(state), state.version)

    def _wait_staged(self, tenant_id: str, state: StoredState) -> bool:
        """Whether this state's frames were staged in Redis (waits for the staging)."""
        with self._lock:
            key = (self._key(tenant_id, state.session_id), state.version, state.checksum)
            job = self._staged.pop(key, None)
        if job is None:
            return False
        try:
            job.result()
            return True
        except CacheUnavailable as exc:
            self._fallback("put", exc)
            return False

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
            self._refill(tenant_id, state)
        self.metrics.state_reads.labels(tier).inc()
        if fingerprint is not None and state.fingerprint != fingerprint:
            raise FingerprintMismatch(session_id, state.fingerprint, fingerprint)
        return replace(state, tier=tier, encoded=None)

    def meta(self, tenant_id: str, session_id: str) -> StateMeta | None:
        """Version, position, fingerprint and sizes of the stored state, without the blob.

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
            SessionState.stored_size,
            SessionState.codec,
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
        return StateMeta(
            session_id,
            int(row[0]),
            row[1],
            int(row[2]),
            int(row[3]),
            row[4],
            int(row[5] or row[3]),
            describe(row[6]),
        )

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
            self.local.put(self._key(tenant_id, state.session_id), replace(state, encoded=None))

    def _refill(self, tenant_id: str, state: StoredState) -> None:
        """Put a state read from SQL back into the hot tier: in the background when it is
        large (the caller need not wait for ~the state's size of Redis writes)."""
        parts = encode_hot(state)
        if not (isinstance(self.cache, RedisCache) and self.cache.is_split(parts)):
            self._put_hot(tenant_id, state)
            return
        key = self._key(tenant_id, state.session_id)

        def put() -> None:
            try:
                self._put_hot(tenant_id, state)
            except Exception:  # a cache fill: never worth failing anything for
                log.exception("session %s: refilling the hot tier failed", state.session_id)

        job = self._stager.submit(put)
        with self._lock:
            self._refills[key] = job
        job.add_done_callback(lambda j: self._refills.get(key) is j and self._refills.pop(key))

    def _get_hot(self, tenant_id: str, session_id: str) -> StoredState | None:
        key = self._key(tenant_id, session_id)
        pending = self._refills.get(key)
        if pending is not None:  # our own refill of this key: let it land first
            wait([pending])
        try:
            parts = self.cache.get(key)
        except CacheUnavailable as exc:
            self._fallback("get", exc)
            return None
        if parts is None:
            return None
        try:
            state = decode_parts(parts, self.codec.threads)
            ok = state.session_id == session_id
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            ok = False
        if not ok:
            log.error("session %s: hot copy fails its checksum; discarded", session_id)
            self.metrics.corrupt_blobs.labels(self.cache.name).inc()
            self._invalidate(tenant_id, session_id)
            return None
        return state

    def _get_sql(self, tenant_id: str, session_id: str) -> StoredState | None:
        for head, got in read_rows(self.db, tenant_id, session_id):
            if head is None:
                return None  # the session has no state yet
            if got is not None:
                return self._decode_sql(session_id, got, head)
        raise CorruptStateError(session_id, "sql")  # chunks never complete: not a race

    def _decode_sql(self, session_id: str, frames: list[bytes], head: RowHead) -> StoredState:
        digest, codec = head.checksum, head.codec
        try:
            if not verify(frames, digest):
                raise ValueError("checksum mismatch")
            blob = decode(frames, codec, self.codec.threads)
        except ValueError as exc:
            log.error("session %s: stored state is corrupt (%s)", session_id, exc)
            self.metrics.corrupt_blobs.labels("sql").inc()
            raise CorruptStateError(session_id, "sql") from exc
        enc = Encoded(frames, codec or dict(RAW_CODEC, n=len(blob)), digest, blob)
        return StoredState(
            session_id,
            head.version,
            blob,
            digest,
            head.fingerprint,
            head.position,
            codec=describe(codec),
            stored_size=enc.stored_size,
            encoded=enc,
        )

    def _put_hot(self, tenant_id: str, state: StoredState, staged: bool = False) -> None:
        key = self._key(tenant_id, state.session_id)
        parts = encode_hot(state)
        try:
            if isinstance(self.cache, RedisCache):
                self.cache.put(key, parts, state.version, self.ttl_s, staged=staged)
            else:
                self.cache.put(key, parts, state.version, self.ttl_s)
        except CacheUnavailable as exc:
            self._fallback("put", exc)
            with self._lock:  # an older hot copy may survive the outage: delete it later
                self._pending_deletes.add(key)

    def _invalidate(self, tenant_id: str, session_id: str) -> None:
        key = self._key(tenant_id, session_id)
        pending = self._refills.get(key)
        if pending is not None:  # a refill landing after the delete would undo it
            wait([pending])
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

    def close(self) -> None:
        """Stop the staging thread."""
        self._stager.shutdown(wait=True)
