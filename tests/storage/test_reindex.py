"""Slot banks record the model that wrote them; the storage steps of re-encoding a
namespace for another model (storage.reindex), on Postgres and SQLite."""

from __future__ import annotations

import uuid

import torch

from storage import Provenance, Storage
from storage import reindex as rx


def fill(st: Storage, tenant: str, ns: str, layer: int, dk: int, dv: int, n: int) -> list[int]:
    bank = st.slots.bank(tenant, ns, layer, d_key=dk, d_value=dv)
    keys = torch.nn.functional.normalize(torch.randn(n, dk), dim=1)
    prov = [Provenance(span=(i, i + 1)) for i in range(n)]
    return bank.add_with_provenance(keys, torch.zeros(n, dv), [0.9] * n, prov).tolist()


def banks(st: Storage, tenant: str) -> dict[tuple[str, int], tuple]:
    return {
        (b.namespace, b.layer): (b.fingerprint, b.d_key, b.size)
        for b in st.slots.admin_banks(tenant)
    }


def test_banks_record_the_model_and_stale_ones_are_found(store: Storage) -> None:
    t = store.tenants.create(f"rx-{uuid.uuid4().hex[:8]}").id
    fill(store, t, "user:old", 1, 8, 4, 2)  # before any model was named: unstamped
    store.slots.model_fingerprint = "A"
    fill(store, t, "user:a", 1, 8, 4, 1)
    store.slots.model_fingerprint = "pending:A"  # a reindex that never finished
    fill(store, t, "user:cut", 1, 8, 4, 1)
    assert banks(store, t)[("user:old", 1)][0] is None
    assert banks(store, t)[("user:a", 1)][0] == "A"
    # an unstamped bank is adopted only with matching dims
    assert rx.adopt_unstamped(store.db, "A", 16, 4) == 0
    assert rx.stale_namespaces(store.db, "A", 8, 4) == [(t, "user:cut")]
    assert rx.adopt_unstamped(store.db, "A", 8, 4) >= 1
    assert banks(store, t)[("user:old", 1)][0] == "A"
    stale_b = rx.stale_namespaces(store.db, "B", 8, 4)
    assert [ns for tt, ns in stale_b if tt == t] == ["user:a", "user:cut", "user:old"]
    # other dims make every bank stale, whatever its fingerprint
    assert (t, "user:a") in rx.stale_namespaces(store.db, "A", 16, 4)


def test_reset_drops_the_namespace_and_finish_stamps_it(store: Storage) -> None:
    t = store.tenants.create(f"rx-{uuid.uuid4().hex[:8]}").id
    store.slots.model_fingerprint = "A"
    fill(store, t, "user:u", 0, 8, 4, 3)
    fill(store, t, "user:u", 1, 8, 4, 3)
    keep = fill(store, t, "user:v", 0, 8, 4, 1)
    assert rx.reset_namespace(store.slots, store.db, t, "user:u") == 6
    assert set(banks(store, t)) == {("user:v", 0)}
    # recreated with the new model's dims (the old bank is gone, not a dims conflict)
    store.slots.model_fingerprint = "pending:B"
    new = fill(store, t, "user:u", 0, 16, 8, 2)
    assert new and not set(new) & set(keep)
    rx.finish_namespace(store.db, t, "user:u", "B")
    assert banks(store, t)[("user:u", 0)] == ("B", 16, 2)
    assert banks(store, t)[("user:v", 0)] == ("A", 8, 1)
    _, ids = store.slots.bank(t, "user:u", 0, d_key=16, d_value=8).search(torch.randn(1, 16), 3)
    assert sorted(i for i in ids[0].tolist() if i >= 0) == sorted(new)  # only the new slots
