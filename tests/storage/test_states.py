"""Recurrent states: byte-identical round trips, compare-and-set, Redis outages, integrity."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import redis
from sqlalchemy import update
from storage_testutil import PrivateRedis, flush_prefix, free_port

from storage import CorruptStateError, FingerprintMismatch, NotFound, StaleVersion, Storage
from storage.models import SessionState

FP = "retnet-test-fp"


def blob(n: int = 4096, seed: int = 0) -> bytes:
    return os.urandom(n) if seed == 0 else bytes((i * seed) % 251 for i in range(n))


def new_session(st: Storage, tenant: str) -> str:
    return st.sessions.create(tenant).id


@pytest.mark.parametrize("size", [1, 786_432])
def test_round_trip_is_byte_identical(store: Storage, tenant: str, size: int) -> None:
    sid = new_session(store, tenant)
    data = blob(size)
    saved = store.states.save(tenant, sid, data, fingerprint=FP, position=17, expected_version=0)
    assert saved.version == 1
    hot = store.states.load(tenant, sid)  # hot tier (Redis on Postgres, LRU on SQLite)
    assert hot is not None and hot.blob == data and hot.position == 17 and hot.version == 1
    hot = store.metrics.value("state_reads", tier=store.cache.name)
    assert hot + store.metrics.value("state_reads", tier="local") == 1
    # the durable tier on its own: a fresh Storage with an empty hot tier
    cold = Storage.from_urls(store.db.url)
    try:
        got = cold.states.load(tenant, sid, fingerprint=FP)
        assert got is not None and got.blob == data and got.checksum == saved.checksum
        assert cold.metrics.value("state_reads", tier="sql") == 1
    finally:
        cold.close()


def test_no_state_yet_and_unknown_session(store: Storage, tenant: str) -> None:
    sid = new_session(store, tenant)
    assert store.states.load(tenant, sid) is None
    with pytest.raises(NotFound):
        store.states.load(tenant, "no-such-session")


def test_fingerprint_mismatch_is_an_error(store: Storage, tenant: str) -> None:
    sid = new_session(store, tenant)
    store.states.save(tenant, sid, b"abc", fingerprint=FP, position=1, expected_version=0)
    with pytest.raises(FingerprintMismatch):
        store.states.load(tenant, sid, fingerprint="another-model")


def race(store: Storage, tenant: str, sid: str, version: int, n: int) -> tuple[list, list]:
    """n threads save at once with the same expected version; returns (wins, losses)."""
    wins: list[int] = []
    losses: list[StaleVersion] = []
    barrier = threading.Barrier(n)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            store.states.save(
                tenant,
                sid,
                f"w{i}".encode(),
                fingerprint=FP,
                position=i,
                expected_version=version,
            )
            wins.append(i)
        except StaleVersion as exc:
            losses.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins, losses


def test_twenty_threads_compare_and_set(store: Storage, tenant: str) -> None:
    sid = new_session(store, tenant)
    rounds, n = 3, 20
    for version in range(rounds):
        wins, losses = race(store, tenant, sid, version, n)
        assert len(wins) == 1, wins
        assert len(losses) == n - 1
        assert all(e.session_id == sid and e.expected == version for e in losses)
        got = store.states.load(tenant, sid)
        assert got is not None and got.version == version + 1
        assert got.blob == f"w{wins[0]}".encode()
    assert store.states.version(tenant, sid) == rounds
    assert store.metrics.value("conflicts", kind="stale_version") == rounds * (n - 1)


def test_cross_tenant_cannot_read_or_write(store: Storage, tenant: str) -> None:
    other = store.tenants.create("other").id
    sid = new_session(store, tenant)
    store.states.save(tenant, sid, b"secret", fingerprint=FP, position=1, expected_version=0)
    with pytest.raises(NotFound):
        store.states.load(other, sid)
    with pytest.raises(NotFound):
        store.states.save(other, sid, b"x", fingerprint=FP, position=1, expected_version=1)
    assert store.states.load(tenant, sid).blob == b"secret"  # type: ignore[union-attr]


def test_flipped_byte_in_sql_is_detected(store: Storage, tenant: str) -> None:
    sid = new_session(store, tenant)
    data = blob(1000, seed=7)
    store.states.save(tenant, sid, data, fingerprint=FP, position=1, expected_version=0)
    bad = bytearray(data)
    bad[500] ^= 0x01
    with store.db.write() as s:
        s.execute(
            update(SessionState).where(SessionState.session_id == sid).values(blob=bytes(bad))
        )
    store.states.evict_hot(tenant, sid)
    with pytest.raises(CorruptStateError, match=sid):
        store.states.load(tenant, sid)
    assert store.metrics.value("corrupt_blobs", tier="sql") == 1


def redis_store(db_url: str, url: str, prefix: str, local: bool = True) -> Storage:
    return Storage.from_urls(
        db_url, url, redis_prefix=prefix, local_state_bytes=64 * 2**20 if local else 0
    )


def hot_reads(st: Storage) -> float:
    return st.metrics.value("state_reads", tier="redis") + st.metrics.value(
        "state_reads", tier="local"
    )


def test_flipped_byte_in_redis_is_detected(
    migrated_pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    st = redis_store(migrated_pg_url, redis_url, redis_prefix, local=False)
    try:
        t = st.tenants.create("t").id
        sid = new_session(st, t)
        data = blob(2000, seed=3)
        st.states.save(t, sid, data, fingerprint=FP, position=1, expected_version=0)
        client = redis.Redis.from_url(redis_url)
        key = f"{redis_prefix}state:{t}:{sid}"
        raw = bytearray(client.get(key))
        raw[-10] ^= 0x80
        client.set(key, bytes(raw))
        got = st.states.load(t, sid)  # the bad hot copy is discarded, SQL answers
        assert got is not None and got.blob == data
        assert st.metrics.value("corrupt_blobs", tier="redis") == 1
        assert st.metrics.value("state_reads", tier="sql") == 1
        client.close()
    finally:
        st.close()


def test_redis_flushed_mid_test_falls_back(
    migrated_pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    st = redis_store(migrated_pg_url, redis_url, redis_prefix)
    try:
        t = st.tenants.create("t").id
        sids = [new_session(st, t) for _ in range(5)]
        blobs = {s: blob(3000) for s in sids}
        for s in sids:
            st.states.save(t, s, blobs[s], fingerprint=FP, position=3, expected_version=0)
        assert flush_prefix(redis_url, redis_prefix) >= 5
        for s in sids:
            assert st.states.load(t, s).blob == blobs[s]  # type: ignore[union-attr]
        assert st.metrics.value("state_reads", tier="sql") == 5
        for s in sids:  # repopulated
            assert st.states.load(t, s).blob == blobs[s]  # type: ignore[union-attr]
        assert hot_reads(st) == 5
    finally:
        st.close()


def test_redis_dead_port_runs_on_sql(migrated_pg_url: str) -> None:
    st = redis_store(migrated_pg_url, f"redis://127.0.0.1:{free_port()}/0", "x:")
    try:
        t = st.tenants.create("t").id
        sid = new_session(st, t)
        st.states.save(t, sid, b"durable", fingerprint=FP, position=1, expected_version=0)
        assert st.states.load(t, sid).blob == b"durable"  # type: ignore[union-attr]
        assert st.metrics.value("state_reads", tier="sql") == 1
        assert st.metrics.value("cache_fallbacks", op="put") >= 1
        with st.locks.acquire(t, sid) as lock:  # locks fall back to the SQL lease
            assert lock.backend == "sql"
    finally:
        st.close()


def test_redis_stopped_mid_test_loses_nothing(migrated_pg_url: str, tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    st = redis_store(migrated_pg_url, server.url, "p:")
    try:
        t = st.tenants.create("t").id
        sid = new_session(st, t)
        st.states.save(t, sid, b"v1", fingerprint=FP, position=1, expected_version=0)
        assert st.states.load(t, sid).blob == b"v1"  # type: ignore[union-attr]
        assert hot_reads(st) == 1
        server.stop()
        st.states.save(t, sid, b"v2", fingerprint=FP, position=2, expected_version=1)
        got = st.states.load(t, sid)
        assert got is not None and got.blob == b"v2" and got.version == 2
        assert st.metrics.value("cache_fallbacks", op="put") >= 1
        assert st.metrics.value("state_reads", tier="sql") == 1
        # a second replica that never saw Redis reads the same acknowledged state
        other = Storage.from_urls(migrated_pg_url)
        assert other.states.load(t, sid).blob == b"v2"  # type: ignore[union-attr]
        other.close()
    finally:
        st.close()
        server.stop()


def test_local_copy_is_never_stale_across_replicas(
    migrated_pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    a = redis_store(migrated_pg_url, redis_url, redis_prefix)
    b = redis_store(migrated_pg_url, redis_url, redis_prefix)
    try:
        t = a.tenants.create("t").id
        sid = new_session(a, t)
        a.states.save(t, sid, b"v1", fingerprint=FP, position=1, expected_version=0)
        assert a.states.load(t, sid).blob == b"v1"  # type: ignore[union-attr]
        assert a.metrics.value("state_reads", tier="local") == 1  # served in-process
        b.states.save(t, sid, b"v2", fingerprint=FP, position=2, expected_version=1)
        got = a.states.load(t, sid)  # a's local copy (v1) must not be returned
        assert got is not None and got.blob == b"v2" and got.version == 2
        assert a.metrics.value("state_reads", tier="redis") == 1
    finally:
        a.close()
        b.close()
