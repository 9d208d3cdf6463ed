"""The one adapter from memsvc's :class:`~memsvc.store.Store` to the ``storage`` package.

It builds storage's managers on one database (and Redis when configured), converts
their records to memsvc's, and maps their errors to API errors. Nothing else in memsvc
imports ``storage``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from memsvc.api.errors import Conflict, NotFound
from memsvc.store import (
    Busy,
    LoadedState,
    MessageRec,
    SessionRec,
    Store,
    TurnCommit,
)
from storage import errors as serr
from storage.cache import LRUCache, RedisCache
from storage.db import Database
from storage.locks import LockManager
from storage.metrics import StorageMetrics
from storage.sessions import MessageManager, SessionManager
from storage.states import StateStore
from storage.tenants import TenantManager

log = logging.getLogger("memsvc.store")
REPLY_SUFFIX = ":reply"


@contextlib.contextmanager
def storage_errors():
    """storage's errors → API errors (404 / 409)."""
    try:
        yield
    except serr.NotFound as exc:
        raise NotFound(str(exc)) from exc
    except serr.LockHeld as exc:
        raise Busy(str(exc)) from exc
    except serr.Conflict as exc:
        raise Conflict(str(exc)) from exc


class StorageStore(Store):
    """Store over storage's managers (see the module docstring)."""

    def __init__(
        self, database_url: str, redis_url: str | None, registry: Any, redis_prefix: str
    ) -> None:
        self.metrics = StorageMetrics(registry)
        self.db = Database(database_url)
        self.redis = RedisCache(redis_url, prefix=redis_prefix) if redis_url else None
        hot = self.redis if self.redis is not None else LRUCache()
        self.tenants = TenantManager(self.db)
        self.sessions = SessionManager(self.db)
        self.messages = MessageManager(self.db)
        self.states = StateStore(self.db, hot, self.metrics)
        self.locks = LockManager(self.db, self.redis, self.metrics)

    # ------------------------------------------------------------------ tenants
    def authenticate(self, key: str) -> str | None:
        return self.tenants.resolve_api_key(key)

    def create_tenant(self, name: str) -> tuple[str, str]:
        tenant = self.tenants.create(name)
        key, _ = self.tenants.create_api_key(tenant.id, name="default")
        return tenant.id, key

    def list_tenants(self) -> list[dict[str, Any]]:
        out = []
        for t in self.tenants.list():
            keys = self.tenants.list_api_keys(t.id)
            live = [k.prefix for k in keys if k.revoked_at is None]
            out.append({"id": t.id, "name": t.name, "created_at": t.created_at, "keys": live})
        return out

    def revoke_tenant(self, tenant_id: str) -> int:
        """Revoke every key of the tenant; returns how many were revoked."""
        with storage_errors():
            self.tenants.get(tenant_id)
            keys = self.tenants.list_api_keys(tenant_id)
        return sum(self.tenants.revoke_api_key(tenant_id, k.id) for k in keys)

    # ------------------------------------------------------------------ sessions
    def _rec(self, info: Any, position: int | None = None) -> SessionRec:
        meta = dict(info.meta or {})
        return SessionRec(
            id=info.id,
            tenant_id=info.tenant_id,
            user_id=meta.get("user"),
            system_prompt=meta.get("system_prompt"),
            memory_scope=meta.get("memory_scope", "user"),
            created_at=info.created_at,
            metadata=meta.get("metadata"),
            message_count=2 * info.version,
            token_count=position if position is not None else 0,
            version=info.version,
        )

    def _position(self, tenant_id: str, session_id: str) -> int:
        state = self.states.load(tenant_id, session_id)
        return 0 if state is None else int(state.position)

    def create_session(self, tenant_id, user_id, system_prompt, memory_scope, metadata):
        internal = self.tenants.ensure_user(tenant_id, user_id) if user_id else None
        meta = {
            "user": user_id,
            "system_prompt": system_prompt,
            "memory_scope": memory_scope,
            "metadata": metadata,
        }
        info = self.sessions.create(tenant_id, user_id=internal, meta=meta)
        return self._rec(info, 0)

    def get_session(self, tenant_id: str | None, session_id: str) -> SessionRec:
        with storage_errors():
            if tenant_id is None:
                tenant_id = self._owner(session_id)
            info = self.sessions.get(tenant_id, session_id)
            return self._rec(info, self._position(tenant_id, session_id))

    def _owner(self, session_id: str) -> str:
        """Tenant of a session (admin lookups across tenants)."""
        for t in self.tenants.list():
            try:
                self.sessions.get(t.id, session_id)
                return t.id
            except serr.NotFound:
                continue
        raise serr.NotFound(f"session {session_id} not found")

    def list_sessions(self, tenant_id, user_id, limit):
        tenants = [tenant_id] if tenant_id else [t.id for t in self.tenants.list()]
        out: list[SessionRec] = []
        for tid in tenants:
            for info in self.sessions.list(tid, limit=limit):
                rec = self._rec(info)
                if user_id is None or rec.user_id == user_id:
                    out.append(rec)
        out.sort(key=lambda r: r.created_at, reverse=True)
        return out[:limit]

    def delete_session(self, tenant_id: str, session_id: str) -> None:
        with storage_errors():
            if not self.sessions.delete(tenant_id, session_id):
                raise serr.NotFound(f"session {session_id} not found")
        self.states.evict_hot(tenant_id, session_id)

    def list_messages(self, tenant_id, session_id, limit):
        with storage_errors():
            self.sessions.get(tenant_id, session_id)
        return [_msg(m) for m in self.messages.list(tenant_id, session_id, limit=limit)]

    def find_turn(self, tenant_id, session_id, key):
        msgs = self.messages.list(tenant_id, session_id, limit=1_000_000)
        by_key = {m.client_key: m for m in msgs if m.client_key}
        user, reply = by_key.get(key), by_key.get(key + REPLY_SUFFIX)
        if user is None or reply is None:
            return None
        return _msg(user), _msg(reply)

    # ------------------------------------------------------------------ turns
    @contextlib.contextmanager
    def session_lock(self, tenant_id: str, session_id: str, wait_s: float):
        """Hold the session's lock (Redis lease, or the SQL lease without Redis)."""
        with storage_errors():
            lock = self.locks.acquire(tenant_id, session_id, ttl_s=600.0, wait_s=wait_s)
        with lock:
            yield lock

    def load_state(self, tenant_id: str, session_id: str) -> LoadedState:
        with storage_errors():
            state = self.states.load(tenant_id, session_id)
            version = self.states.version(tenant_id, session_id)
        if state is None:
            return LoadedState(None, version, "miss")
        tier = "redis" if self.redis is not None else "lru"
        return LoadedState(state.blob, state.version, tier)

    def commit_turn(self, c: TurnCommit) -> tuple[MessageRec, MessageRec]:
        """Messages first, then the state (compare-and-set on the version)."""
        key = c.idempotency_key
        with storage_errors():
            user = self.messages.append(
                c.tenant_id,
                c.session_id,
                "user",
                c.user_content,
                client_key=key,
                meta={"tokens": c.user_tokens},
            )
            reply = self.messages.append(
                c.tenant_id,
                c.session_id,
                "assistant",
                c.assistant_content,
                client_key=(key + REPLY_SUFFIX) if key else None,
                meta={"tokens": c.assistant_tokens},
            )
            self.states.save(
                c.tenant_id,
                c.session_id,
                c.state,
                fingerprint=c.fingerprint,
                position=c.position,
                expected_version=c.expected_version,
            )
        return _msg(user), _msg(reply)

    # ------------------------------------------------------------------ snapshots
    def snapshot_backing(self) -> Any:
        """Durable snapshot store behind the in-process cache (None: in-process only)."""
        return None

    # ------------------------------------------------------------------ health
    def ping(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with self.db.read() as s:
                s.exec_driver_sql("SELECT 1") if hasattr(s, "exec_driver_sql") else None
            checks["database"] = {"ok": True, "backend": self.db.engine.dialect.name}
        except Exception as exc:  # readiness reports, never raises
            checks["database"] = {"ok": False, "error": type(exc).__name__}
        if self.redis is not None:
            checks["redis"] = {"ok": bool(self.redis.available())}
        return checks

    def close(self) -> None:
        self.db.dispose()


def _msg(m: Any) -> MessageRec:
    return MessageRec(
        id=str(m.id),
        session_id=m.session_id,
        role=m.role,
        content=m.content,
        created_at=m.created_at,
        token_count=(m.meta or {}).get("tokens"),
    )
