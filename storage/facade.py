"""``Storage``: one object holding every manager, built from two URLs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from storage import migrate as _migrate
from storage.cache import HotCache, LRUCache, RedisCache
from storage.config import StateConfig
from storage.counters import Counters
from storage.db import Database
from storage.locks import LockManager
from storage.memories import MemoryManager
from storage.memory_commit import MemoryChanges, apply_slot_and_memory_changes
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
from storage.slot_view import BankChanges, BankView, load_view
from storage.snapshots import SnapshotManager
from storage.states import StateStore, StoredState
from storage.tenants import TenantManager
from storage.usage import UsageManager
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
    ``passages``, ``snapshots``, ``memories``, ``usage``, ``counters`` (limits), ``metrics``
    (its ``registry`` is what to export).
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
        state_ttl_s: float | None = None,
        local_state_bytes: int | None = None,
        state_config: StateConfig | None = None,
    ) -> None:
        self.db, self.cache, self.redis = db, cache, redis
        self.metrics = metrics or StorageMetrics()
        self.tenants = TenantManager(db)
        self.sessions = SessionManager(db)
        self.messages = MessageManager(db)
        self.states = StateStore(
            db,
            cache,
            self.metrics,
            ttl_s=state_ttl_s,
            local_bytes=local_state_bytes,
            config=state_config,
        )
        self.state_config = self.states.config
        self.locks = LockManager(db, redis, self.metrics)
        self.slots = SlotManager(db, self.metrics, index_dir=index_dir, params=index_params)
        self.passages = PassageManager(db, self.metrics, index_dir=index_dir, params=index_params)
        self.snapshots = SnapshotManager(db, self.metrics, self.state_config)
        self.memories = MemoryManager(db)
        self.items = MemoryItems(db)
        self.usage = UsageManager(db)
        self.counters = Counters(redis)

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
        lru_bytes: int | None = None,
        state_ttl_s: float | None = None,
        local_state_bytes: int | None = None,
        state_config: StateConfig | None = None,
    ) -> Storage:
        """Storage over ``database_url`` and Redis at ``redis_url`` (None: in-process LRU).

        ``migrate=True`` upgrades the schema first. ``state_config`` sets how states and
        snapshots are stored (codec, bf16, Redis byte budget, ...); ``lru_bytes``,
        ``state_ttl_s`` and ``local_state_bytes`` (the in-process copies of recent states
        kept in front of Redis, 0: none) override its fields when given.
        ``index_dir`` keeps FAISS index files so a restart catches up from the change log
        instead of rebuilding.
        """
        if migrate:
            _migrate.upgrade(database_url)
        cfg = state_config or StateConfig()
        if lru_bytes is not None:
            cfg = replace(cfg, lru_bytes=lru_bytes)
        redis = (
            RedisCache(
                redis_url,
                redis_prefix,
                max_bytes=cfg.hot_max_bytes,
                inline_bytes=cfg.hot_inline_bytes,
            )
            if redis_url
            else None
        )
        cache: HotCache = redis if redis is not None else LRUCache(cfg.lru_bytes)
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
            state_config=cfg,
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
        slot_changes: Sequence[BankChanges] = (),
        memory_changes: Sequence[MemoryChanges] = (),
    ) -> TurnCommitted:
        """A turn's messages and its new state in ONE SQL transaction, then the hot tier.

        Compare-and-set on the session version first (it also locks the session row, so
        the messages' ``seq`` stays gapless), then the messages in order (idempotent by
        ``client_key``: one seen before is returned, not written again). A stale
        ``expected_version`` raises :class:`StaleVersion` and writes nothing at all;
        another tenant's session is :class:`NotFound`. Redis / the LRU is updated only
        after the commit, as in :meth:`StateStore.save`. ``slot_changes`` (what the turn's
        bank views recorded) are merged in the same transaction, bank by bank in id order
        (see :mod:`storage.slot_view`), with the memories they carry
        (:mod:`storage.memory_commit`); ``memory_changes``: memories written or retired
        without slots (text memories of a model without memory layers), likewise.
        """
        state = None
        try:
            with self.db.write() as s:
                state = self.states.write(
                    s,
                    tenant_id,
                    session_id,
                    state_blob,
                    fingerprint=fingerprint,
                    position=position,
                    expected_version=expected_version,
                )
                infos = [append_locked(s, tenant_id, session_id, m) for m in messages]
                user_id = next((int(m.id) for m in infos if m.role == "user"), None)
                fresh = all(m.created for m in infos)  # an idempotent replay writes no slots
                if fresh:  # bank rows locked in one order: no deadlock
                    apply_slot_and_memory_changes(s, slot_changes, user_id, memory_changes)
        except BaseException:
            if state is not None:
                self.states.abandon(tenant_id, state)
            raise
        self.states.committed(tenant_id, state)
        return TurnCommitted(infos, state)

    def bank_views(self, banks: Sequence) -> list[BankView]:
        """In-memory views of ``banks`` for one turn, caught up and loaded in one transaction."""
        with self.db.read() as s:
            return [load_view(s, bank) for bank in banks]

    def commit_slots(self, slot_changes: Sequence[BankChanges]) -> list[dict[int, int]]:
        """Changes of bank views made outside a turn (explicit writes, feedback) and the
        memories they carry, in one transaction.

        Returns, per change set in the given order, the view's id → stored id of new slots
        (a merge's memory is filled into its ``memories.merged_into``).
        """
        with self.db.write() as s:
            new = apply_slot_and_memory_changes(s, slot_changes, None)
        return [
            dict(zip(ch.pending, ids, strict=True))
            for ch, ids in zip(slot_changes, new, strict=True)
        ]

    def commit_memories(self, memory_changes: Sequence[MemoryChanges]) -> None:
        """Memories written or retired without slots (text memories), in one transaction."""
        with self.db.write() as s:
            apply_slot_and_memory_changes(s, (), None, memory_changes)

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
        self.states.close()
        if self.redis is not None:
            self.redis.client.close()
            self.redis.bulk.close()
        self.db.dispose()
