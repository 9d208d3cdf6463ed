"""``Storage``: one object holding every manager, built from two URLs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from storage import migrate as _migrate
from storage.cache import HotCache, LRUCache, RedisCache
from storage.db import Database
from storage.locks import LockManager
from storage.memories import MemoryManager
from storage.memory_items import MemoryItems
from storage.metrics import StorageMetrics
from storage.passages import PassageManager
from storage.sessions import (
    MessageIn,
    MessageInfo,
    MessageManager,
    SessionManager,
    append_locked,
)
from storage.slot_manager import SlotManager
from storage.snapshots import SnapshotManager
from storage.states import StateStore, StoredState
from storage.tenants import TenantManager
from storage.vector_index import IndexParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnCommitted:
    """What :meth:`Storage.commit_turn` wrote: the messages (in order) and the state."""

    messages: list[MessageInfo]
    state: StoredState


class Storage:
    """Managers over one database and one hot tier (Redis, or an in-process LRU).

    Attributes: ``tenants``, ``sessions``, ``messages``, ``states``, ``locks``, ``slots``,
    ``passages``, ``snapshots``, ``memories``, ``metrics`` (its ``registry`` is what to export).
    """

    def __init__(
        self,
        db: Database,
        cache: HotCache,
        *,
        redis: RedisCache | None = None,
        metrics: StorageMetrics | None = None,
        index_dir: Path | None = None,
        index_params: IndexParams | None = None,
        state_ttl_s: float = 3600.0,
        local_state_bytes: int = 64 * 2**20,
    ) -> None:
        self.db, self.cache, self.redis = db, cache, redis
        self.metrics = metrics or StorageMetrics()
        self.tenants = TenantManager(db)
        self.sessions = SessionManager(db)
        self.messages = MessageManager(db)
        self.states = StateStore(
            db, cache, self.metrics, ttl_s=state_ttl_s, local_bytes=local_state_bytes
        )
        self.locks = LockManager(db, redis, self.metrics)
        self.slots = SlotManager(db, self.metrics, index_dir=index_dir, params=index_params)
        self.passages = PassageManager(db, self.metrics, index_dir=index_dir, params=index_params)
        self.snapshots = SnapshotManager(db, self.metrics)
        self.memories = MemoryManager(db)
        self.items = MemoryItems(db)

    @classmethod
    def from_urls(
        cls,
        database_url: str,
        redis_url: str | None = None,
        *,
        redis_prefix: str = "memsvc:",
        registry: CollectorRegistry | None = None,
        index_dir: Path | None = None,
        index_params: IndexParams | None = None,
        migrate: bool = False,
        lru_bytes: int = 256 * 2**20,
        state_ttl_s: float = 3600.0,
        local_state_bytes: int = 64 * 2**20,
    ) -> Storage:
        """Storage over ``database_url`` and Redis at ``redis_url`` (None: in-process LRU).

        ``migrate=True`` upgrades the schema first. ``local_state_bytes`` bounds the
        in-process copies of recent states kept in front of Redis (0: none).
        ``index_dir`` keeps FAISS index files so a restart catches up from the change log
        instead of rebuilding.
        """
        if migrate:
            _migrate.upgrade(database_url)
        redis = RedisCache(redis_url, redis_prefix) if redis_url else None
        cache: HotCache = redis if redis is not None else LRUCache(lru_bytes)
        if redis is not None and not redis.available():
            log.warning("redis at %s is not answering; running on SQL until it is", redis_url)
        return cls(
            Database(database_url),
            cache,
            redis=redis,
            metrics=StorageMetrics(registry),
            index_dir=index_dir,
            index_params=index_params,
            state_ttl_s=state_ttl_s,
            local_state_bytes=local_state_bytes,
        )

    def commit_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: Sequence[MessageIn],
        state_blob: bytes,
        *,
        fingerprint: str,
        position: int,
        expected_version: int,
    ) -> TurnCommitted:
        """A turn's messages and its new state in ONE SQL transaction, then the hot tier.

        Compare-and-set on the session version first (it also locks the session row, so
        the messages' ``seq`` stays gapless), then the messages in order (idempotent by
        ``client_key``: one seen before is returned, not written again). A stale
        ``expected_version`` raises :class:`StaleVersion` and writes nothing at all;
        another tenant's session is :class:`NotFound`. Redis / the LRU is updated only
        after the commit, as in :meth:`StateStore.save`.
        """
        state = self.states.prepare(session_id, state_blob, fingerprint, position, expected_version)
        with self.db.write() as s:
            self.states.compare_and_set(s, tenant_id, state)
            infos = [append_locked(s, tenant_id, session_id, m) for m in messages]
        self.states.committed(tenant_id, state)
        return TurnCommitted(infos, state)

    def delete_session(self, tenant_id: str, session_id: str) -> bool:
        """Delete a session with its messages, state (both tiers) and session-scoped slots."""
        self.slots.delete_namespace(tenant_id, f"session:{session_id}")
        gone = self.sessions.delete(tenant_id, session_id)
        self.states.evict_hot(tenant_id, session_id)
        return gone

    def delete_tenant(self, tenant_id: str) -> bool:
        """Delete a tenant and everything it owns; open indexes drop its items too."""
        gone = self.tenants.delete(tenant_id)
        self.slots.forget_tenant(tenant_id)
        self.passages.forget_tenant(tenant_id)
        return gone

    def close(self) -> None:
        """Save index files, close Redis and the connection pool."""
        self.slots.save_indexes()
        self.passages.save_indexes()
        if self.redis is not None:
            self.redis.client.close()
        self.db.dispose()
