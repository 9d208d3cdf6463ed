"""Tenants, API keys, sessions and messages: ordering, idempotency, tenant isolation."""

from __future__ import annotations

import threading

import pytest

from storage import NotFound, Storage
from storage.errors import IdempotencyMismatch
from storage.models import ApiKey


def test_api_keys_are_hashed_and_revocable(store: Storage, tenant: str) -> None:
    key, info = store.tenants.create_api_key(tenant, "ci")
    assert store.tenants.resolve_api_key(key) == tenant
    assert store.tenants.resolve_api_key(key + "x") is None
    with store.db.read() as s:
        stored = s.get(ApiKey, info.id)
        assert stored is not None and key not in stored.key_hash and len(stored.key_hash) == 64
    other = store.tenants.create("other").id
    assert not store.tenants.revoke_api_key(other, info.id)  # not theirs
    assert store.tenants.revoke_api_key(tenant, info.id)
    assert store.tenants.resolve_api_key(key) is None


def test_messages_are_ordered_and_idempotent(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant, title="t").id
    a = store.messages.append(tenant, sid, "user", "hello", client_key="k1")
    b = store.messages.append(tenant, sid, "assistant", "hi")
    again = store.messages.append(tenant, sid, "user", "hello", client_key="k1")
    assert (a.seq, b.seq) == (1, 2)
    assert again.id == a.id and again.content == "hello" and not again.created
    # the key names its content: reused for another message (or role) it is refused
    for role, content in (("user", "hello (retry)"), ("assistant", "hello")):
        with pytest.raises(IdempotencyMismatch):
            store.messages.append(tenant, sid, role, content, client_key="k1")
    msgs = store.messages.list(tenant, sid)
    assert [m.content for m in msgs] == ["hello", "hi"]
    assert [m.seq for m in store.messages.list(tenant, sid, after_seq=1)] == [2]


def test_concurrent_appends_get_gapless_seq_and_dedupe(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    n = 12
    barrier = threading.Barrier(n)
    errors: list[Exception] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:  # every message twice with the same client key
            for _ in range(2):
                store.messages.append(tenant, sid, "user", f"m{i}", client_key=f"k{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    msgs = store.messages.list(tenant, sid)
    assert [m.seq for m in msgs] == list(range(1, n + 1))
    assert sorted(m.client_key for m in msgs) == sorted(f"k{i}" for i in range(n))


def test_cross_tenant_reads_and_deletes_return_nothing(store: Storage, tenant: str) -> None:
    other = store.tenants.create("other").id
    sid = store.sessions.create(tenant).id
    store.messages.append(tenant, sid, "user", "private")
    with pytest.raises(NotFound):
        store.sessions.get(other, sid)
    assert store.sessions.list(other) == []
    assert store.messages.list(other, sid) == []
    with pytest.raises(NotFound):
        store.messages.append(other, sid, "user", "intrusion")
    assert store.sessions.delete(other, sid) is False
    assert store.sessions.get(tenant, sid).id == sid
    assert [m.content for m in store.messages.list(tenant, sid)] == ["private"]


def test_delete_session_cascades(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    store.messages.append(tenant, sid, "user", "x")
    store.states.save(tenant, sid, b"s", fingerprint="fp", position=1, expected_version=0)
    assert store.sessions.delete(tenant, sid)
    store.states.evict_hot(tenant, sid)
    with pytest.raises(NotFound):
        store.states.load(tenant, sid)
    assert store.messages.list(tenant, sid) == []


def test_users_are_per_tenant(store: Storage, tenant: str) -> None:
    u1 = store.tenants.ensure_user(tenant, "alice")
    assert store.tenants.ensure_user(tenant, "alice") == u1
    other = store.tenants.create("other").id
    assert store.tenants.ensure_user(other, "alice") != u1
    sid = store.sessions.create(tenant, user_id=u1).id
    assert [s.id for s in store.sessions.list(tenant, user_id=u1)] == [sid]


def test_admin_session_reads_across_tenants(store: Storage) -> None:
    a, b = store.tenants.create("a").id, store.tenants.create("b").id
    carol_a = store.tenants.ensure_user(a, "carol")
    carol_b = store.tenants.ensure_user(b, "carol")
    s1 = store.sessions.create(a, user_id=carol_a).id
    s2 = store.sessions.create(a).id
    s3 = store.sessions.create(b, user_id=carol_b).id
    assert store.sessions.owner(s3) == b and store.sessions.owner(s1) == a
    assert store.sessions.owner("nope") is None
    newest_first = [s3, s2, s1]
    assert [x.id for x in store.sessions.admin_list()] == newest_first
    assert [x.id for x in store.sessions.admin_list(tenant_id=a)] == [s2, s1]
    assert [x.id for x in store.sessions.admin_list(external_user_id="carol")] == [s3, s1]
    assert [x.id for x in store.sessions.admin_list(tenant_id=a, external_user_id="carol")] == [s1]
    # the user filter is applied before the limit, not after it
    assert [x.id for x in store.sessions.admin_list(external_user_id="carol", limit=1)] == [s3]
    assert [x.id for x in store.sessions.admin_list(limit=2, offset=1)] == [s2, s1]
