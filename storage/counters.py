"""Counters that limits are built on: fixed-window hit counters and leased semaphores.

With Redis configured they are shared by every replica (the keys live under the
storage prefix); without it, or while Redis is down, each process counts on its own.

- **Window counter** (requests per minute): the window ``w = ⌊t / W⌋`` of the current
  unix time ``t`` names a key ``limit:<name>:<w>``; a hit is ``INCR`` plus ``EXPIRE 2W``
  in one ``MULTI``, so two replicas never both read the same count. The count includes
  the hit itself; the window ends in ``W·(w+1) − t`` seconds.
- **Semaphore** (concurrent turns): a sorted set ``limit:<name>`` of holder tokens scored
  by their lease's expiry (ms, Redis's clock). A Lua script drops expired holders, then
  adds the new one only when fewer than ``limit`` remain, atomically. A replica that dies
  mid-turn frees its place when the lease runs out; a finished turn removes its token.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid

from storage.cache import CacheUnavailable, RedisCache

log = logging.getLogger(__name__)

_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def window_of(now: float, window_s: int) -> tuple[int, float]:
    """(window number ``⌊now / W⌋``, seconds until it ends ``W·(w+1) − now``)."""
    w = math.floor(now / window_s)
    return w, window_s * (w + 1) - now


class LocalCounters:
    """The in-process side: the same two counters for one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[str, tuple[int, int]] = {}  # name -> (window, count)
        self._held: dict[str, dict[str, float]] = {}  # name -> token -> expiry (monotonic)

    def hit(self, name: str, window: int) -> int:
        """Hits of ``name`` in ``window`` so far, this one included."""
        with self._lock:
            w, n = self._hits.get(name, (window, 0))
            n = n + 1 if w == window else 1
            self._hits[name] = (window, n)
            return n

    def acquire(self, name: str, limit: int, ttl_s: float, token: str) -> bool:
        """Hold ``name`` as ``token`` when fewer than ``limit`` unexpired holders do."""
        now = time.monotonic()
        with self._lock:
            held = {t: exp for t, exp in self._held.get(name, {}).items() if exp > now}
            ok = len(held) < limit
            if ok:
                held[token] = now + ttl_s
            self._held[name] = held
            return ok

    def release(self, name: str, token: str) -> None:
        with self._lock:
            self._held.get(name, {}).pop(token, None)


class Counters:
    """Window counters and semaphores over Redis when given, else in this process."""

    def __init__(self, redis: RedisCache | None) -> None:
        self.redis = redis
        self.local = LocalCounters()
        self._acquire = redis.client.register_script(_ACQUIRE) if redis is not None else None

    def key(self, name: str) -> str:
        """The Redis key of counter ``name`` (a window counter appends ``:<window>``)."""
        prefix = self.redis.prefix if self.redis is not None else ""
        return f"{prefix}limit:{name}"

    def hit(self, name: str, window_s: int, now: float | None = None) -> tuple[int, float]:
        """Count one hit of ``name`` in the current window: (hits so far, seconds left)."""
        w, left = window_of(time.time() if now is None else now, window_s)
        if self.redis is not None:
            client, key = self.redis.client, f"{self.key(name)}:{w}"

            def incr() -> int:
                pipe = client.pipeline(transaction=True)
                pipe.incr(key)
                pipe.expire(key, 2 * window_s)
                return int(pipe.execute()[0])

            try:
                return self.redis.call(incr), left
            except CacheUnavailable:
                log.warning("redis is down: counting %s in this process", name)
        return self.local.hit(name, w), left

    def acquire(self, name: str, limit: int, ttl_s: float) -> str | None:
        """A holder token when fewer than ``limit`` hold ``name``, else None."""
        token = uuid.uuid4().hex
        if self.redis is not None and self._acquire is not None:
            args = [limit, max(1, int(ttl_s * 1000)), token]
            try:
                got = self.redis.call(self._acquire, [self.key(name)], args)
                return token if int(got) == 1 else None
            except CacheUnavailable:
                log.warning("redis is down: holding %s in this process", name)
        local = "local:" + token
        return local if self.local.acquire(name, limit, ttl_s, local) else None

    def release(self, name: str, token: str) -> None:
        """Give back a token from :meth:`acquire` (an expired one is already gone)."""
        if token.startswith("local:") or self.redis is None:
            self.local.release(name, token)
            return
        try:
            self.redis.call(self.redis.client.zrem, self.key(name), token)
        except CacheUnavailable:
            log.warning("redis is down: %s's holder expires with its lease", name)
