"""The hot tier in front of SQL: Redis when configured, else an in-process LRU.

Both implement :class:`HotCache`: a versioned store of *records*, each a list of byte
parts (a small head and the stored frames of a state). :class:`RedisCache` turns every
Redis failure into :class:`CacheUnavailable` (callers fall back to SQL and count it) and,
after a failure, stops trying for ``retry_after_s`` so a dead Redis costs one timeout,
not one per call. :meth:`HotCache.put` never replaces a newer version with an older one,
so two writers finishing out of order cannot leave a stale copy behind.

Sizes are bounded: both tiers hold at most ``max_bytes`` of records and evict the least
recently used first. Evicting never loses a state: SQL holds every acknowledged one.

Redis layout (``P`` the prefix, ``K`` a key)::

    P K            the record: "MHP1", u32 n, n x u64 part lengths, then the parts inline
                   (records up to inline_bytes), or "MHS1", same table, then a part id
                   "<version>.<hash>": the parts are in P K:p:<id>:<i>, one key each (a
                   48 MiB state is never one huge value, nor passes through a Lua script)
    P K:v          the record's version (kept when the budget evicts the record, so a
                   replica's in-process copy can still be proven current)
    P hot:lru      sorted set: key -> last use (ms)     P hot:size   hash: key -> bytes
    P hot:parts    hash: key -> "<part id>:<n>"         P hot:total  bytes accounted

A split record is written in two steps: its parts with plain SETs (:meth:`stage`, which
a caller may run while SQL commits), then one short script that checks the version,
swaps the head, accounts the bytes and evicts down to the budget. Entries that expire by
TTL stay accounted until evicted or purged, so the accounted total is never below what
Redis really holds: the budget is conservative.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import redis
import xxhash

_INLINE, _SPLIT = b"MHP1", b"MHS1"
_MGET_BATCH = 16  # parts per MGET of a split record

# Shared by the scripts: drop a key's split parts and its accounting (not its K:v).
_LIB = """
local P = ARGV[1]
local function drop_parts(key, keep)
  local info = redis.call('HGET', P .. 'hot:parts', key)
  if info and info ~= keep then
    local v, n = string.match(info, '^([%w%.]+):(%d+)$')
    for i = 0, tonumber(n) - 1 do redis.call('DEL', P .. key .. ':p:' .. v .. ':' .. i) end
  end
  redis.call('HDEL', P .. 'hot:parts', key)
end
local function forget(key, keep)
  drop_parts(key, keep)
  local size = tonumber(redis.call('HGET', P .. 'hot:size', key) or '0')
  redis.call('HDEL', P .. 'hot:size', key)
  redis.call('ZREM', P .. 'hot:lru', key)
  if size > 0 then redis.call('DECRBY', P .. 'hot:total', size) end
end
"""

# ARGV: prefix, key, head, version, ttl ms, size, budget, parts info ("" inline), now ms
# returns 1 stored, 0 a newer version is there, 2 larger than the whole budget (dropped)
_COMMIT = (
    _LIB
    + """
local key, head, version, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local size, budget, info, now = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9]
local cur = redis.call('GET', P .. key .. ':v')
if cur and tonumber(cur) > tonumber(version) then return 0 end
local stale = tostring(tonumber(now) - tonumber(ttl))  -- used before the TTL: expired
local expired = redis.call('ZRANGEBYSCORE', P .. 'hot:lru', '-inf', stale, 'LIMIT', 0, 64)
for _, k in ipairs(expired) do forget(k, nil) end
forget(key, info)
redis.call('SET', P .. key .. ':v', version, 'PX', ttl)
if budget > 0 and tonumber(size) > budget then
  redis.call('DEL', P .. key)
  return 2
end
redis.call('SET', P .. key, head, 'PX', ttl)
if info ~= '' then redis.call('HSET', P .. 'hot:parts', key, info) end
redis.call('HSET', P .. 'hot:size', key, size)
redis.call('ZADD', P .. 'hot:lru', now, key)
local total = redis.call('INCRBY', P .. 'hot:total', size)
while budget > 0 and total > budget do
  local victim = redis.call('ZRANGE', P .. 'hot:lru', 0, 0)[1]
  if not victim then break end
  forget(victim, nil)
  redis.call('DEL', P .. victim)
  total = tonumber(redis.call('GET', P .. 'hot:total') or '0')
end
return 1
"""
)

# ARGV: prefix, key -- forget a record entirely (value, parts, version, accounting)
_DELETE = (
    _LIB
    + """
forget(ARGV[2], nil)
redis.call('DEL', P .. ARGV[2], P .. ARGV[2] .. ':v')
return 1
"""
)


class CacheUnavailable(Exception):
    """The cache could not be reached; the caller uses the SQL tier instead."""


class HotCache(Protocol):
    """A versioned, size-bounded store of records (lists of byte parts) with a TTL."""

    name: str

    def get(self, key: str) -> list[bytes] | None: ...

    def put(self, key: str, parts: Sequence[bytes], version: int, ttl_s: float) -> None: ...

    def delete(self, key: str) -> None: ...


def pack_parts(magic: bytes, sizes: Sequence[int], tail: bytes = b"") -> bytes:
    """``magic``, u32 count, u64 size per part, then ``tail``."""
    return magic + struct.pack(f">I{len(sizes)}Q", len(sizes), *sizes) + tail


def unpack_table(data: bytes) -> tuple[bytes, list[int], int]:
    """(magic, part sizes, offset after the table) of a record; ValueError if malformed."""
    magic = bytes(data[:4])
    if magic not in (_INLINE, _SPLIT) or len(data) < 8:
        raise ValueError("not a hot-tier record")
    (n,) = struct.unpack(">I", data[4:8])
    end = 8 + 8 * n
    if len(data) < end:
        raise ValueError("truncated hot-tier record")
    return magic, list(struct.unpack(f">{n}Q", data[8:end])), end


def split_inline(data: bytes) -> list[bytes]:
    """The parts of an inline record (``MHP1``); ValueError when it is not one."""
    magic, sizes, pos = unpack_table(data)
    if magic != _INLINE or len(data) != pos + sum(sizes):
        raise ValueError("not a complete inline record")
    parts = []
    view = memoryview(data)
    for n in sizes:
        parts.append(bytes(view[pos : pos + n]))
        pos += n
    return parts


class LRUCache:
    """In-process LRU bounded by total bytes; the embedded default's hot tier."""

    name = "lru"

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[list[bytes], int, float, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def used_bytes(self) -> int:
        """Bytes of the records held now."""
        return self._bytes

    def get(self, key: str) -> list[bytes] | None:
        """The parts, or None when absent or expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[2] < time.monotonic():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return list(item[0])

    def put(self, key: str, parts: Sequence[bytes], version: int, ttl_s: float) -> None:
        """Store unless a newer version is already there; evict least recently used."""
        size = sum(len(p) for p in parts)
        with self._lock:
            old = self._items.get(key)
            if old is not None and old[1] > version:
                return
            self._drop(key)
            if size > self.max_bytes:
                return
            self._items[key] = (list(parts), version, time.monotonic() + ttl_s, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[3]


class RedisCache:
    """Redis hot tier; keys live under ``prefix``; at most ``max_bytes`` of records.

    ``max_bytes`` 0 means no budget (sizes are still accounted). Records larger than
    ``inline_bytes`` are split into one key per part.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "memsvc:",
        *,
        timeout_s: float = 0.5,
        bulk_timeout_s: float = 5.0,
        retry_after_s: float = 1.0,
        max_bytes: int = 2**30,
        inline_bytes: int = 4 * 2**20,
    ) -> None:
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self.max_bytes, self.inline_bytes = max_bytes, inline_bytes
        # a 1 MiB read size: the default 64 KiB makes a 786 KB GET about 5x slower
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_read_size=2**20,
        )
        # the parts of split records (tens of MB) on connections that may wait longer:
        # a busy server can pause that long mid-transfer without being down
        self.bulk = redis.Redis.from_url(
            url,
            socket_timeout=bulk_timeout_s,
            socket_connect_timeout=timeout_s,
            socket_read_size=2**20,
        )
        self._commit = self.client.register_script(_COMMIT)
        self._delete = self.client.register_script(_DELETE)
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

    def _part_key(self, key: str, pid: str, i: int) -> str:
        return f"{self.prefix}{key}:p:{pid}:{i}"

    @staticmethod
    def part_id(parts: Sequence[bytes], version: int) -> str:
        """``<version>.<hash of the first part>``: two writers racing for one version (one
        of them will lose its compare-and-set) never share part keys."""
        return f"{version}.{xxhash.xxh3_64_hexdigest(parts[0]) if parts else ''}"

    def is_split(self, parts: Sequence[bytes]) -> bool:
        """Whether a record of these parts is stored one key per part."""
        return sum(len(p) for p in parts) > self.inline_bytes

    def get(self, key: str) -> list[bytes] | None:
        """The record's parts, or None (absent, expired, evicted); raises CacheUnavailable.

        Marks the record used (LRU) in the same round trip. A split record whose parts
        vanished meanwhile (evicted or replaced by a newer version) is a miss.
        """

        def read() -> list[bytes] | None:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.prefix + key)
            pipe.zadd(self.prefix + "hot:lru", {key: _now_ms()}, xx=True)
            head = pipe.execute()[0]
            if head is None:
                return None
            try:
                magic, sizes, pos = unpack_table(head)
                if magic == _INLINE:
                    return split_inline(head)
            except ValueError:
                return [head]  # damaged: the caller's integrity check discards it
            pid = head[pos:].decode("ascii", "replace")
            keys = [self._part_key(key, pid, i) for i in range(len(sizes))]
            parts: list[bytes] = []
            for b in range(0, len(keys), _MGET_BATCH):  # replies of a few MB each
                got = self.bulk.mget(keys[b : b + _MGET_BATCH])
                if any(p is None for p in got):
                    return None
                parts.extend(got)
            return parts

        return self.call(read)

    def stage(self, key: str, parts: Sequence[bytes], version: int, ttl_s: float) -> None:
        """Write a split record's parts (invisible until :meth:`put` of that version)."""
        if not self.is_split(parts):
            return
        ttl, pid = int(ttl_s * 1000), self.part_id(parts, version)

        def write() -> None:
            pipe = self.bulk.pipeline(transaction=False)
            for i, p in enumerate(parts):
                pipe.set(self._part_key(key, pid, i), p, px=ttl)
            pipe.execute()

        self.call(write)

    def unstage(self, key: str, parts: Sequence[bytes], version: int) -> None:
        """Delete parts staged for a version that was never committed."""
        pid = self.part_id(parts, version)
        keys = [self._part_key(key, pid, i) for i in range(len(parts))]
        if keys and self.is_split(parts):
            self.call(self.bulk.delete, *keys)

    def put(
        self, key: str, parts: Sequence[bytes], version: int, ttl_s: float, *, staged: bool = False
    ) -> None:
        """Store unless a newer version is there, then evict down to the budget.

        A split record's parts are written first unless ``staged`` says :meth:`stage`
        already did. Raises :class:`CacheUnavailable`.
        """
        sizes = [len(p) for p in parts]
        split = self.is_split(parts)
        if split and not staged:
            self.stage(key, parts, version, ttl_s)
        if split:
            pid = self.part_id(parts, version)
            head, info = pack_parts(_SPLIT, sizes, pid.encode()), f"{pid}:{len(parts)}"
        else:
            head, info = pack_parts(_INLINE, sizes, b"".join(parts)), ""
        size = len(head) + (sum(sizes) if split else 0)
        args = [
            self.prefix,
            key,
            head,
            version,
            int(ttl_s * 1000),
            size,
            self.max_bytes,
            info,
            _now_ms(),
        ]
        done = self.call(lambda: self._commit(keys=[], args=args))
        if split and int(done) == 0:  # a newer version won: its parts are not ours
            self.unstage(key, parts, version)

    def version(self, key: str) -> int | None:
        """The version stored with ``key`` (a few bytes), or None; raises CacheUnavailable."""
        got = self.call(self.client.get, self.prefix + key + ":v")
        return int(got) if got is not None else None

    def delete(self, key: str) -> None:
        """Forget ``key``: record, parts, version and accounting; raises CacheUnavailable."""
        self.call(lambda: self._delete(keys=[], args=[self.prefix, key]))

    def used_bytes(self) -> int:
        """Bytes accounted to records now (an upper bound of what Redis holds for them)."""
        got = self.call(self.client.get, self.prefix + "hot:total")
        return int(got or 0)

    def available(self) -> bool:
        """One PING, True when Redis answers."""
        try:
            return bool(self.call(self.client.ping))
        except CacheUnavailable:
            return False


def _now_ms() -> int:
    return int(time.time() * 1000)
