"""Passages (RAG) and state snapshots at passage boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import update

from storage import CorruptStateError, Storage
from storage.models import StateSnapshot
from storage.passages import PassageIn
from storage.snapshots import chain_hash, state_hash


def embeddings(n: int, d: int = 12, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def doc(n: int) -> list[PassageIn]:
    return [PassageIn(f"passage {i}", 10 * i, 10 * i + 9) for i in range(n)]


def test_add_search_delete_document(store: Storage, tenant: str) -> None:
    e1, e2 = embeddings(6, seed=1), embeddings(4, seed=2)
    d1 = store.passages.add_document(tenant, "a.txt", doc(6), e1, meta={"k": 1})
    d2 = store.passages.add_document(tenant, "b.txt", doc(4), e2)
    hits = store.passages.search(tenant, e1[2], k=3)
    assert hits[0].id == d1.passage_ids[2] and hits[0].text == "passage 2"
    assert (hits[0].start, hits[0].end) == (20, 29) and hits[0].score == pytest.approx(1.0)
    assert [d.name for d in store.passages.list_documents(tenant)] == ["a.txt", "b.txt"]
    assert store.passages.delete_document(tenant, d1.id)
    hits = store.passages.search(tenant, e1[2], k=10)
    assert {h.id for h in hits} == set(d2.passage_ids)  # nothing of the deleted document
    fresh = Storage.from_urls(store.db.url)  # a new replica rebuilds from SQL
    assert {h.id for h in fresh.passages.search(tenant, e1[2], k=10)} == set(d2.passage_ids)
    fresh.close()


def test_cross_tenant_passages(store: Storage, tenant: str) -> None:
    other = store.tenants.create("other").id
    e = embeddings(3)
    d = store.passages.add_document(tenant, "secret.txt", doc(3), e)
    assert store.passages.search(other, e[0], k=3) == []
    assert store.passages.get_passages(other, d.passage_ids) == []
    assert store.passages.list_documents(other) == []
    assert store.passages.delete_document(other, d.id) is False
    assert len(store.passages.search(tenant, e[0], k=3)) == 3


def test_snapshots_longest_prefix_and_integrity(store: Storage, tenant: str) -> None:
    start = state_hash(b"empty")
    chain = [11, 12, 13, 14]
    store.snapshots.put(tenant, "fp", start, chain[:1], b"after-1", 10)
    store.snapshots.put(tenant, "fp", start, chain[:3], b"after-3", 30)
    n, snap = store.snapshots.longest_prefix(tenant, "fp", start, chain)  # type: ignore[misc]
    assert (n, snap.blob, snap.position) == (3, b"after-3", 30)
    assert store.snapshots.longest_prefix(tenant, "other-fp", start, chain) is None
    assert store.snapshots.longest_prefix(store.tenants.create("o").id, "fp", start, chain) is None
    assert store.snapshots.get(tenant, "fp", start, chain[:2]) is None
    with store.db.write() as s:
        s.execute(
            update(StateSnapshot)
            .where(StateSnapshot.chain_hash == chain_hash(chain[:3]))
            .values(blob=b"after-X")
        )
    with pytest.raises(CorruptStateError):
        store.snapshots.longest_prefix(tenant, "fp", start, chain)
    assert store.snapshots.prune(tenant, keep=1) == 1


def test_deleting_tenant_empties_its_passage_index(store: Storage, tenant: str) -> None:
    e = embeddings(3)
    store.passages.add_document(tenant, "x.txt", doc(3), e)
    assert len(store.passages.search(tenant, e[0], k=3)) == 3
    ix = store.passages._indexes[tenant]
    assert store.delete_tenant(tenant)
    assert ix.search(e[:1], 3)[1].tolist() == [[-1] * 3]
    assert store.passages.search(tenant, e[0], k=3) == []


def test_empty_document_then_real_one(store: Storage, tenant: str) -> None:
    empty = store.passages.add_document(tenant, "empty.txt", [], np.empty((0, 12), np.float32))
    assert empty.passage_ids == [] and not store.passages.has_passages(tenant)
    e = embeddings(2)
    d = store.passages.add_document(tenant, "b.txt", doc(2), e)
    assert store.passages.has_passages(tenant)
    assert [h.id for h in store.passages.search(tenant, e[1], k=1)] == [d.passage_ids[1]]
