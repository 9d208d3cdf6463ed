"""One writer per session: a lease lock in Redis (``SET NX PX`` + token) or in SQL.

The lock keeps well-behaved writers apart; the compare-and-set on the session version
(:meth:`storage.states.StateStore.save`) is what guarantees that two writers never both
win, even when a lease expired under a slow writer or Redis failed over.

Without Redis, or while Redis is unreachable, the lease is a row in ``leases`` taken with
a conditional UPDATE / INSERT (works the same on PostgreSQL and SQLite).
"""

from __future__ import annotations

import logging
import time
import uuid
from types import TracebackType

import redis
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from storage.cache import CacheUnavailable, RedisCache
from storage.db import Database
from storage.errors import Conflict, LockHeld
from storage.metrics import StorageMetrics
from storage.models import Lease

log = logging.getLogger(__name__)

_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
_EXTEND = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


class Lock:
    """A held lock; use as a context manager or call :meth:`release`."""

    def __init__(self, manager: LockManager, name: str, token: str, backend: str) -> None:
        self.manager, self.name, self.token, self.backend = manager, name, token, backend
        self.released = False

    def extend(self, ttl_s: float) -> None:
        """Push the expiry to now + ttl_s; raises :class:`Conflict` if the lock was lost."""
        if not self.manager._extend(self, ttl_s):
            raise Conflict(f"lock {self.name!r} was lost")

    def release(self) -> None:
        """Release if still ours (idempotent)."""
        if not self.released:
            self.manager._release(self)
            self.released = True

    def __enter__(self) -> Lock:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class LockManager:
    """Per-session locks; every call takes the tenant."""

    def __init__(self, db: Database, cache: RedisCache | None, metrics: StorageMetrics) -> None:
        self.db, self.cache, self.metrics = db, cache, metrics
        if cache is not None:
            self._release_script = cache.client.register_script(_RELEASE)
            self._extend_script = cache.client.register_script(_EXTEND)

    @staticmethod
    def name(tenant_id: str, session_id: str) -> str:
        """The lock's name for a session."""
        return f"lock:{tenant_id}:{session_id}"

    def acquire(
        self, tenant_id: str, session_id: str, *, ttl_s: float = 30.0, wait_s: float = 0.0
    ) -> Lock:
        """Take the session's lock or raise :class:`LockHeld` after ``wait_s`` seconds."""
        name = self.name(tenant_id, session_id)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        delay = 0.005
        while True:
            backend = self._try(name, token, ttl_s)
            if backend is not None:
                return Lock(self, name, token, backend)
            if time.monotonic() >= deadline:
                self.metrics.conflicts.labels("lock_held").inc()
                raise LockHeld(name)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)

    def _try(self, name: str, token: str, ttl_s: float) -> str | None:
        if self.cache is not None:
            try:
                ok = self.cache.call(
                    self.cache.client.set,
                    self.cache.prefix + name,
                    token,
                    None,
                    int(ttl_s * 1000),
                    True,
                )
                return "redis" if ok else None
            except CacheUnavailable as exc:
                log.warning("redis lock failed (%s); using the SQL lease", exc)
                self.metrics.cache_fallbacks.labels("lock").inc()
        return "sql" if self._try_sql(name, token, ttl_s) else None

    def _try_sql(self, name: str, token: str, ttl_s: float) -> bool:
        now = time.time()
        try:
            with self.db.write() as s:
                res = s.execute(
                    update(Lease)
                    .where(Lease.name == name, Lease.expires_at < now)
                    .values(token=token, expires_at=now + ttl_s)
                )
                if res.rowcount == 1:
                    return True
                if s.get(Lease, name) is not None:
                    return False
                s.add(Lease(name=name, token=token, expires_at=now + ttl_s))
            return True
        except IntegrityError:  # another writer inserted it first
            return False

    def _release(self, lock: Lock) -> None:
        if lock.backend == "redis":
            try:
                self.cache.call(self._release_script, [self.cache.prefix + lock.name], [lock.token])  # type: ignore[union-attr]
            except (CacheUnavailable, redis.RedisError) as exc:
                log.warning("redis unlock failed (%s); the lease will expire", exc)
            return
        with self.db.write() as s:
            s.execute(delete(Lease).where(Lease.name == lock.name, Lease.token == lock.token))

    def _extend(self, lock: Lock, ttl_s: float) -> bool:
        if lock.backend == "redis":
            got = self.cache.call(  # type: ignore[union-attr]
                self._extend_script,
                [self.cache.prefix + lock.name],
                [lock.token, int(ttl_s * 1000)],  # type: ignore[union-attr]
            )
            return bool(got)
        with self.db.write() as s:
            res = s.execute(
                update(Lease)
                .where(Lease.name == lock.name, Lease.token == lock.token)
                .values(expires_at=time.time() + ttl_s)
            )
            return res.rowcount == 1
