"""A turn's messages and its new state commit in one transaction (or not at all)."""

from __future__ import annotations

import pytest

from storage import NotFound, StaleVersion, Storage
from storage.errors import IdempotencyMismatch
from storage.sessions import MessageIn

FP = "retnet-test-fp"


def turn_messages(key: str | None, n: int = 0) -> list[MessageIn]:
    reply_key = None if key is None else key + ":reply"
    return [
        MessageIn("user", f"question {n}", client_key=key, meta={"tokens": 3}),
        MessageIn("assistant", f"answer {n}", client_key=reply_key, meta={"tokens": 5}),
    ]


def test_commit_turn_writes_messages_and_state_together(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    out = store.commit_turn(
        tenant,
        sid,
        turn_messages("k1"),
        b"state-1",
        fingerprint=FP,
        position=8,
        expected_version=0,
    )
    assert [(m.seq, m.role, m.client_key) for m in out.messages] == [
        (1, "user", "k1"),
        (2, "assistant", "k1:reply"),
    ]
    assert out.state.version == 1 and out.state.position == 8
    assert store.states.version(tenant, sid) == 1
    loaded = store.states.load(tenant, sid)
    assert loaded is not None and loaded.blob == b"state-1" and loaded.version == 1
    # the hot tier was written after the commit: the load did not need SQL
    assert store.metrics.value("state_reads", tier="sql") == 0
    assert [m.content for m in store.messages.list(tenant, sid)] == ["question 0", "answer 0"]


def test_stale_version_writes_neither_messages_nor_state(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    store.commit_turn(
        tenant,
        sid,
        turn_messages("k1"),
        b"state-1",
        fingerprint=FP,
        position=8,
        expected_version=0,
    )
    with pytest.raises(StaleVersion):
        store.commit_turn(
            tenant,
            sid,
            turn_messages("k2", 1),
            b"state-stale",
            fingerprint=FP,
            position=99,
            expected_version=0,
        )
    assert [m.client_key for m in store.messages.list(tenant, sid)] == ["k1", "k1:reply"]
    assert store.states.version(tenant, sid) == 1
    for st in (store, Storage.from_urls(store.db.url)):  # hot tier, and SQL alone
        try:
            loaded = st.states.load(tenant, sid)
            assert loaded is not None and loaded.blob == b"state-1" and loaded.position == 8
        finally:
            if st is not store:
                st.close()
    # the next writer at the right version gets seq 3 (no gap left by the failed one)
    out = store.commit_turn(
        tenant,
        sid,
        turn_messages("k2", 1),
        b"state-2",
        fingerprint=FP,
        position=20,
        expected_version=1,
    )
    assert [m.seq for m in out.messages] == [3, 4] and out.state.version == 2


def test_commit_turn_is_idempotent_by_client_key_and_tenant_scoped(
    store: Storage, tenant: str
) -> None:
    sid = store.sessions.create(tenant).id
    first = store.commit_turn(
        tenant, sid, turn_messages("k1"), b"s1", fingerprint=FP, position=1, expected_version=0
    )
    again = store.commit_turn(
        tenant, sid, turn_messages("k1"), b"s2", fingerprint=FP, position=2, expected_version=1
    )
    assert [m.id for m in again.messages] == [m.id for m in first.messages]
    assert not any(m.created for m in again.messages)
    assert len(store.messages.list(tenant, sid)) == 2
    other = store.tenants.create("other").id
    with pytest.raises(NotFound):
        store.commit_turn(
            other, sid, turn_messages("x"), b"s", fingerprint=FP, position=1, expected_version=2
        )
    assert len(store.messages.list(tenant, sid)) == 2 and store.states.version(tenant, sid) == 2


def test_a_reused_key_with_other_content_commits_nothing(store: Storage, tenant: str) -> None:
    """The user message's key binds its content (checked inside the commit's transaction);
    a generated reply's key does not: a redo of the same turn may word it differently."""
    sid = store.sessions.create(tenant).id
    store.commit_turn(
        tenant, sid, turn_messages("k1"), b"s1", fingerprint=FP, position=8, expected_version=0
    )
    other = [MessageIn("user", "another question", client_key="k1"), turn_messages(None)[1]]
    with pytest.raises(IdempotencyMismatch):
        store.commit_turn(
            tenant, sid, other, b"s2", fingerprint=FP, position=16, expected_version=1
        )
    assert store.states.version(tenant, sid) == 1  # the state did not move either
    assert [m.content for m in store.messages.list(tenant, sid)] == ["question 0", "answer 0"]
    redo = turn_messages("k1")
    redo[1] = MessageIn(
        "assistant", "worded otherwise", client_key="k1:reply", key_binds_content=False
    )
    again = store.commit_turn(
        tenant, sid, redo, b"s3", fingerprint=FP, position=16, expected_version=1
    )
    assert [(m.content, m.created) for m in again.messages] == [
        ("question 0", False),
        ("answer 0", False),
    ]
    assert len(store.messages.list(tenant, sid)) == 2
