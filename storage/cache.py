"""The hot tier in front of SQL: Redis when configured, else an in-process LRU.

Both implement :class:`HotCache`. :class:`RedisCache` turns every Redis failure into
:class:`CacheUnavailable` (callers fall back to SQL and count it) and, after a failure,
stops trying for ``retry_after_s`` so a dead Redis costs one timeout, not one per call.
Values are versioned: :meth:`HotCache.put` never replaces a newer version with an older
one, so two writers finishing out of order cannot leave a stale copy behind.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol

import redis

# KEYS[1] value key, KEYS[2] version key; ARGV: value, version, ttl ms
_PUT_IF_NEWER = """
local cur = redis.call('GET', KEYS[2])
if cur and tonumber(cur) > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""


class CacheUnavailable(Exception):
    """The cache could not be reached; the caller uses the SQL tier instead."""


class HotCache(Protocol):
    """A versioned bytes cache with a TTL."""

    name: str

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, version: int, ttl_s: float) -> None: ...

    def delete(self, key: str) -> None: ...


class LRUCache:
    """In-process LRU bounded by total bytes; the embedded default's hot tier."""

    name = "lru"

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, int, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[2] < time.monotonic():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: bytes, version: int, ttl_s: float) -> None:
        """Store unless a newer version is already there; evict least recently used."""
        with self._lock:
            old = self._items.get(key)
            if old is not None and old[1] > version:
                return
            if old is not None:
                self._drop(key)
            self._items[key] = (value, version, time.monotonic() + ttl_s)
            self._bytes += len(value)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._drop(next(iter(self._items)))

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item[0])


class RedisCache:
    """Redis hot tier; keys live under ``prefix``."""

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "memsvc:",
        *,
        timeout_s: float = 0.5,
        retry_after_s: float = 1.0,
    ) -> None:
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        # a 1 MiB read size: the default 64 KiB makes a 786 KB GET about 5x slower
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_read_size=2**20,
        )
        self._put_script = self.client.register_script(_PUT_IF_NEWER)
        self._down_until = 0.0

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run a Redis operation; :class:`CacheUnavailable` when Redis fails or is marked down."""
        if time.monotonic() < self._down_until:
            raise CacheUnavailable("redis marked down")
        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_after_s
            raise CacheUnavailable(str(exc)) from exc

    def get(self, key: str) -> bytes | None:
        """The value or None; raises :class:`CacheUnavailable`."""
        return self.call(self.client.get, self.prefix + key)

    def put(self, key: str, value: bytes, version: int, ttl_s: float) -> None:
        """Store unless a newer version is there; raises :class:`CacheUnavailable`."""
        k = self.prefix + key
        self.call(
            lambda: self._put_script(keys=[k, k + ":v"], args=[value, version, int(ttl_s * 1000)])
        )

    def version(self, key: str) -> int | None:
        """The version stored with ``key`` (a few bytes), or None; raises CacheUnavailable."""
        got = self.call(self.client.get, self.prefix + key + ":v")
        return int(got) if got is not None else None

    def delete(self, key: str) -> None:
        """Forget ``key``; raises :class:`CacheUnavailable`."""
        k = self.prefix + key
        self.call(self.client.delete, k, k + ":v")

    def available(self) -> bool:
        """One PING, True when Redis answers."""
        try:
            return bool(self.call(self.client.ping))
        except CacheUnavailable:
            return False
