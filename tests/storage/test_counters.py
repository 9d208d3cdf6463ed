"""storage.counters on real Redis and in process: fixed windows and leased semaphores."""

from __future__ import annotations

import time

import pytest

from storage.cache import RedisCache
from storage.counters import Counters, window_of


@pytest.fixture(params=["redis", "local"])
def counters(request, redis_url: str, redis_prefix: str):
    if request.param == "local":
        yield Counters(None)
        return
    cache = RedisCache(redis_url, redis_prefix)
    yield Counters(cache)
    cache.client.close()
    cache.bulk.close()


def test_window_of() -> None:
    assert window_of(125.0, 60) == (2, 55.0)
    assert window_of(120.0, 60) == (2, 60.0)


def test_hits_count_within_a_window_and_restart_in_the_next(counters: Counters) -> None:
    t = 60 * 1000 + 1.0
    assert [counters.hit("a", 60, t + i)[0] for i in range(3)] == [1, 2, 3]
    assert counters.hit("b", 60, t)[0] == 1  # names count apart
    assert counters.hit("a", 60, t + 60) == (1, 59.0)  # the next window starts again


def test_semaphore_holds_at_most_limit_until_released_or_expired(counters: Counters) -> None:
    first = counters.acquire("s", 2, 30.0)
    second = counters.acquire("s", 2, 30.0)
    assert first and second and first != second
    assert counters.acquire("s", 2, 30.0) is None
    counters.release("s", first)
    third = counters.acquire("s", 2, 0.2)
    assert third is not None and counters.acquire("s", 2, 30.0) is None
    time.sleep(0.3)  # the short lease ran out: its place is free again
    assert counters.acquire("s", 2, 30.0) is not None


def test_redis_counters_are_shared_between_processes(redis_url: str, redis_prefix: str) -> None:
    """Two replicas (two Counters on one Redis) see each other's hits and holders."""
    a, b = RedisCache(redis_url, redis_prefix), RedisCache(redis_url, redis_prefix)
    try:
        one, two = Counters(a), Counters(b)
        t = 60 * 2000 + 5.0
        assert one.hit("r", 60, t)[0] == 1 and two.hit("r", 60, t)[0] == 2
        token = one.acquire("t", 1, 30.0)
        assert token is not None and two.acquire("t", 1, 30.0) is None
        one.release("t", token)
        assert two.acquire("t", 1, 30.0) is not None
    finally:
        for cache in (a, b):
            cache.client.close()
            cache.bulk.close()
