"""Per-session locks: Redis SET NX PX with a token, or the SQL lease without Redis."""

from __future__ import annotations

import threading
import time

import pytest

from storage import Conflict, LockHeld, Storage


def test_one_holder_at_a_time(store: Storage, tenant: str) -> None:
    backend = "redis" if store.redis is not None else "sql"
    lock = store.locks.acquire(tenant, "s1", ttl_s=5)
    assert lock.backend == backend
    with pytest.raises(LockHeld):
        store.locks.acquire(tenant, "s1", ttl_s=5)
    other = store.locks.acquire(tenant, "s2", ttl_s=5)  # another session is free
    lock.release()
    again = store.locks.acquire(tenant, "s1", ttl_s=5)
    again.release()
    other.release()
    assert store.metrics.value("conflicts", kind="lock_held") == 1


def test_expired_lease_can_be_taken_and_old_holder_cannot_extend(
    store: Storage, tenant: str
) -> None:
    old = store.locks.acquire(tenant, "s", ttl_s=0.2)
    time.sleep(0.35)
    new = store.locks.acquire(tenant, "s", ttl_s=5)
    with pytest.raises(Conflict):
        old.extend(5)
    old.release()  # must not release the new holder's lock
    with pytest.raises(LockHeld):
        store.locks.acquire(tenant, "s", ttl_s=5)
    new.release()


def test_waiting_acquire_gets_the_lock_after_release(store: Storage, tenant: str) -> None:
    first = store.locks.acquire(tenant, "s", ttl_s=5)
    threading.Timer(0.2, first.release).start()
    t0 = time.monotonic()
    with store.locks.acquire(tenant, "s", ttl_s=5, wait_s=5) as second:
        assert second.token != first.token
    assert time.monotonic() - t0 >= 0.15


def test_threads_contending_for_one_lock(store: Storage, tenant: str) -> None:
    got: list[int] = []
    barrier = threading.Barrier(10)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            store.locks.acquire(tenant, "hot", ttl_s=30)
            got.append(i)
        except LockHeld:
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1
