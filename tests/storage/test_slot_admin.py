"""Admin reads across tenants: filters in SQL, records that name their tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

from storage import NotFound, Provenance, Storage
from storage.passages import PassageIn
from storage.slot_manager import SlotQuery

DK, DV = 8, 4


def fill(st: Storage, tenant: str, ns: str, layer: int, gates: list[float], sess: str | None):
    bank = st.slots.bank(tenant, ns, layer, d_key=DK, d_value=DV)
    n = len(gates)
    keys = torch.nn.functional.normalize(torch.randn(n, DK), dim=1)
    prov = [Provenance(session_id=sess, span=(i, i + 1)) for i in range(n)]
    return bank.add_with_provenance(keys, torch.zeros(n, DV), gates, prov).tolist()


def test_admin_list_get_evict_across_tenants(store: Storage) -> None:
    a, b = store.tenants.create("a").id, store.tenants.create("b").id
    a_user = fill(store, a, "user:u1", 1, [0.2, 0.9], "s1")
    a_sess = fill(store, a, "session:s2", 1, [0.5], None)  # session only in the namespace
    b_user = fill(store, b, "user:u1", 2, [0.95], "s1")
    every = store.slots.admin_list(SlotQuery())
    assert [r.id for r in every] == sorted(a_user + a_sess + b_user)
    assert {r.id: r.tenant_id for r in every} == {
        **dict.fromkeys(a_user + a_sess, a),
        **dict.fromkeys(b_user, b),
    }
    assert [r.id for r in store.slots.admin_list(SlotQuery(tenant_id=b))] == b_user
    assert [r.id for r in store.slots.admin_list(SlotQuery(namespace="user:u1"))] == sorted(
        a_user + b_user
    )
    assert [r.id for r in store.slots.admin_list(SlotQuery(session_id="s2"))] == a_sess
    assert [r.id for r in store.slots.admin_list(SlotQuery(session_id="s1", layer=2))] == b_user
    high = store.slots.admin_list(SlotQuery(min_gate=0.5, max_gate=0.92))
    assert [r.id for r in high] == sorted([a_user[1], *a_sess])
    store.slots.bank(a, "user:u1", 1, d_key=DK, d_value=DV).touch(torch.tensor(a_user[:1]))
    assert [r.id for r in store.slots.admin_list(SlotQuery(min_reads=1))] == a_user[:1]
    assert len(store.slots.admin_list(SlotQuery(max_reads=0))) == 3
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert len(store.slots.admin_list(SlotQuery(created_before=future))) == 4
    assert store.slots.admin_list(SlotQuery(created_before=future - timedelta(hours=1))) == []
    assert [r.id for r in store.slots.admin_list(SlotQuery(), limit=2, offset=1)] == [
        r.id for r in every[1:3]
    ]

    got = store.slots.admin_get(b_user[0])
    assert got.tenant_id == b and got.namespace == "user:u1" and got.layer == 2
    with pytest.raises(NotFound):
        store.slots.admin_get(10**9)

    banks = store.slots.admin_banks()
    assert {(x.tenant_id, x.namespace, x.layer, x.size) for x in banks} == {
        (a, "session:s2", 1, 1),
        (a, "user:u1", 1, 2),
        (b, "user:u1", 2, 1),
    }
    assert [x.tenant_id for x in store.slots.admin_banks(b)] == [b]

    evicted = store.slots.admin_evict(SlotQuery(namespace="user:u1"))
    assert evicted == sorted(a_user + b_user)
    assert [r.id for r in store.slots.admin_list(SlotQuery())] == a_sess
    for tenant, layer in ((a, 1), (b, 2)):  # and the indexes no longer return them
        bank = store.slots.bank(tenant, "user:u1", layer, d_key=DK, d_value=DV)
        _, ids = bank.search(torch.randn(1, DK), 5)
        assert (ids == -1).all()


def test_passage_count_across_tenants(store: Storage) -> None:
    a, b = store.tenants.create("a").id, store.tenants.create("b").id
    emb = np.eye(3, 8, dtype=np.float32)
    store.passages.add_document(a, "x", [PassageIn(f"p{i}", i, i + 1) for i in range(3)], emb)
    store.passages.add_document(b, "y", [PassageIn("p", 0, 1)], emb[:1])
    assert store.passages.count() == 4
    assert (store.passages.count(a), store.passages.count(b)) == (3, 1)
