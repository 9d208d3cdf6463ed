"""Cheap lookups the service needs: message by client key, passages present, state
metadata without the blob, and which tier answered a state load."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect

from storage import NotFound, Storage
from storage.db import normalize_url
from storage.passages import PassageIn

FP = "retnet-test-fp"


def test_message_by_client_key_is_scoped_and_indexed(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    other_sid = store.sessions.create(tenant).id
    a = store.messages.append(tenant, sid, "user", "hello", client_key="k1")
    store.messages.append(tenant, other_sid, "user", "elsewhere", client_key="k2")
    got = store.messages.by_client_key(tenant, sid, "k1")
    assert got is not None and got.id == a.id and got.content == "hello"
    assert store.messages.by_client_key(tenant, sid, "k2") is None  # another session's key
    assert store.messages.by_client_key(tenant, sid, "nope") is None
    other = store.tenants.create("other").id
    assert store.messages.by_client_key(other, sid, "k1") is None  # another tenant
    # the lookup is answered by the unique (session_id, client_key) index
    engine = create_engine(normalize_url(store.db.url))
    try:
        uniques = inspect(engine).get_unique_constraints("messages")
    finally:
        engine.dispose()
    assert ["session_id", "client_key"] in [u["column_names"] for u in uniques]


def test_has_passages_follows_the_documents(store: Storage, tenant: str) -> None:
    assert not store.passages.has_passages(tenant)
    emb = np.eye(3, 8, dtype=np.float32)
    d = store.passages.add_document(
        tenant, "a", [PassageIn(f"p{i}", i, i + 1) for i in range(3)], emb
    )
    assert store.passages.has_passages(tenant)
    assert not store.passages.has_passages(store.tenants.create("other").id)
    assert store.passages.delete_document(tenant, d.id)
    assert not store.passages.has_passages(tenant)  # its bank remains, its passages do not
    fresh = Storage.from_urls(store.db.url)  # another replica, no index opened
    try:
        assert not fresh.passages.has_passages(tenant)
        store.passages.add_document(tenant, "b", [PassageIn("p", 0, 1)], emb[:1])
        assert fresh.passages.has_passages(tenant)
    finally:
        fresh.close()


def test_state_meta_has_position_and_version_without_the_blob(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    assert store.states.meta(tenant, sid) is None
    store.states.save(tenant, sid, b"x" * 100, fingerprint=FP, position=42, expected_version=0)
    meta = store.states.meta(tenant, sid)
    assert (meta.version, meta.position, meta.fingerprint, meta.size) == (1, 42, FP, 100)
    assert not hasattr(meta, "blob")
    reads = {t: store.metrics.value("state_reads", tier=t) for t in ("local", "sql", "miss")}
    store.states.meta(tenant, sid)  # not a state load: no tier counter moves
    assert reads == {t: store.metrics.value("state_reads", tier=t) for t in reads}
    with pytest.raises(NotFound):
        store.states.meta(store.tenants.create("other").id, sid)


def test_load_says_which_tier_answered(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    store.states.save(tenant, sid, b"state", fingerprint=FP, position=1, expected_version=0)
    first = store.states.load(tenant, sid)
    # after a save: the in-process copy in front of Redis, or the LRU without Redis
    assert first.tier == ("local" if store.redis is not None else "lru")
    if store.redis is not None:
        store.states.local.drop(store.states._key(tenant, sid))
        assert store.states.load(tenant, sid).tier == "redis"
    cold = Storage.from_urls(store.db.url)  # empty hot tier: SQL answers, then the LRU
    try:
        assert cold.states.load(tenant, sid).tier == "sql"
        assert cold.states.load(tenant, sid).tier == "lru"
    finally:
        cold.close()
    assert first.blob == b"state" and first.version == 1
