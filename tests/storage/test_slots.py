"""Memory slots: the SlotStore protocol over SQL + FAISS, eviction that sticks, tenants."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from retnet_core.slots import ExactSlotStore, SlotStore
from storage import NotFound, Provenance, Storage, namespace
from storage.memories import NewMemory, new_memory_id
from storage.models import MemorySlot

DK, DV = 16, 8


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)


def open_bank(st: Storage, tenant: str, ns: str = "user:u1", layer: int = 2):  # noqa: ANN201
    return st.slots.bank(tenant, ns, layer, d_key=DK, d_value=DV)


def test_bank_implements_the_protocol_like_the_exact_store(store: Storage, tenant: str) -> None:
    bank, ref = open_bank(store, tenant), ExactSlotStore(DK, DV)
    assert isinstance(bank, SlotStore)
    keys, values, gates = unit(40, DK, 1), torch.randn(40, DV), torch.rand(40)
    ids = bank.add(keys, values, gates)
    ref_ids = ref.add(keys, values, gates)
    to_ref = dict(zip(ids.tolist(), ref_ids.tolist(), strict=True))
    drop = ids[::3]
    bank.remove(drop)
    ref.remove(torch.tensor([to_ref[i] for i in drop.tolist()]))
    bank.update(ids[1:2], unit(1, DK, 9), torch.zeros(1, DV))
    ref.update(torch.tensor([to_ref[int(ids[1])]]), unit(1, DK, 9), torch.zeros(1, DV))
    assert len(bank) == len(ref) == 40 - len(drop)
    q = unit(5, DK, 2)
    s1, i1 = bank.search(q, 7)
    s2, i2 = ref.search(q, 7)
    assert [[to_ref[i] for i in row] for row in i1.tolist()] == i2.tolist()
    assert torch.allclose(s1, s2, atol=1e-5)
    k, v = bank.fetch(ids[1:3])
    assert torch.allclose(v[0], torch.zeros(DV)) and torch.allclose(v[1], values[2])
    with pytest.raises(KeyError):
        bank.fetch(drop[:1])
    all_ids, all_k, _ = bank.all()
    assert sorted(all_ids.tolist()) == all_ids.tolist() and all_k.shape == (len(bank), DK)
    bank.touch(ids[1:2])
    st = bank.stats()
    assert st.ids.tolist() == all_ids.tolist()
    row = st.ids.tolist().index(int(ids[1]))
    assert int(st.reads[row]) == 1 and int(st.last_read[row]) > int(st.created[row])
    _, padded = bank.search(q[:1], 100)
    assert (padded[0, len(bank) :] == -1).all()


def test_provenance_is_recorded(store: Storage, tenant: str) -> None:
    bank = open_bank(store, tenant)
    text, mid = "I have the cat.", new_memory_id()
    prov = [Provenance(session_id="s1", message_id=None, span=(7, 14), memory_id=mid)]
    (sid,) = bank.add_with_provenance(unit(1, DK, 3), torch.ones(1, DV), [0.7], prov).tolist()
    new = NewMemory(mid, tenant, "user:u1", "u1", "s1", None, (0, len(text)), text)
    memory = store.memories.record(new, [sid], 0.7, "test")
    assert (memory.text, memory.slots, memory.user_id) == (text, 1, "u1")
    rec = store.slots.get(tenant, sid)  # the slot's own span text, resolved, never copied
    assert (rec.session_id, rec.span, rec.text, rec.memory_id) == ("s1", (7, 14), "the cat", mid)
    assert bank.records([sid])[0].text is None  # the bank's own records carry no text
    assert rec.namespace == "user:u1" and rec.layer == 2 and abs(rec.gate - 0.7) < 1e-6
    assert [b.size for b in store.slots.banks(tenant)] == [1]


def live_ids(st: Storage, tenant: str) -> set[int]:
    return {r.id for r in st.slots.list(tenant, limit=10**6)}


def test_evicted_slot_absent_from_search_and_after_rebuild(store: Storage, tenant: str) -> None:
    bank = open_bank(store, tenant)
    keys = unit(30, DK, 4)
    ids = bank.add(keys, torch.randn(30, DV), torch.ones(30)).tolist()
    victim = ids[5]
    assert bank.search(keys[5:6], 1)[1].item() == victim
    assert store.slots.evict(tenant, [victim]) == 1
    assert victim not in bank.search(keys[5:6], 30)[1].tolist()[0]
    bank.rebuild()
    assert victim not in bank.search(keys[5:6], 30)[1].tolist()[0]
    assert set(bank.all()[0].tolist()) == live_ids(store, tenant)


CHILD = """
import json, sys, torch
from storage import Storage
from pathlib import Path
st = Storage.from_urls(sys.argv[1], index_dir=Path(sys.argv[2]))
out = {}
for ns in ("user:rebuilt", "user:saved"):
    bank = st.slots.open_bank(sys.argv[3], ns, 2)
    rebuilds = st.metrics.value("index_rebuilds", kind="slot")
    q = torch.tensor(json.loads(sys.argv[4]))
    ids = [i for i in bank.search(q, 50)[1].tolist()[0] if i >= 0]
    out[ns] = {"ids": ids, "len": len(bank), "rebuilt": rebuilds - len(out)}
print(json.dumps(out))
"""


def search_in_new_process(db_url: str, index_dir: Path, tenant: str, q: torch.Tensor) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, str(index_dir), tenant, json.dumps(q.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_evicted_slot_absent_in_a_new_process(db_url: str, tmp_path: Path) -> None:
    """One bank is rebuilt from SQL in the new process; the other loads an index file
    saved before the eviction and must catch up from the change log."""
    st = Storage.from_urls(db_url, index_dir=tmp_path / "ix")
    tenant = st.tenants.create("t").id
    keys = unit(20, DK, 5)
    banks = {ns: open_bank(st, tenant, ns) for ns in ("user:rebuilt", "user:saved")}
    ids = {ns: b.add(keys, torch.randn(20, DV), torch.ones(20)).tolist() for ns, b in banks.items()}
    banks["user:saved"].save_index()
    for ns, bank in banks.items():
        bank.remove(torch.tensor([ids[ns][3]]))
    st.close()
    (tmp_path / "ix" / f"slots-{banks['user:rebuilt'].bank_id}.faiss").unlink()
    got = search_in_new_process(db_url, tmp_path / "ix", tenant, keys[3:4])
    for ns in banks:
        assert ids[ns][3] not in got[ns]["ids"] and got[ns]["len"] == 19
        assert set(got[ns]["ids"]) == set(ids[ns]) - {ids[ns][3]}
    assert got["user:rebuilt"]["rebuilt"] == 1
    assert got["user:saved"]["rebuilt"] == 0  # loaded the file, caught up from its seq


def test_concurrent_writers_leave_index_equal_to_sql(store: Storage, tenant: str) -> None:
    bank = open_bank(store, tenant)
    n_threads, rounds = 6, 8
    errors: list[Exception] = []
    barrier = threading.Barrier(n_threads)

    def writer(w: int) -> None:
        rng = np.random.default_rng(w)
        barrier.wait()
        try:
            for r in range(rounds):
                new = bank.add(unit(4, DK, 100 * w + r), torch.randn(4, DV), torch.ones(4))
                if rng.random() < 0.5:
                    bank.remove(new[:2])
                if r % 3 == 0:
                    bank.update(new[-1:], unit(1, DK, 999 + w), torch.zeros(1, DV))
                bank.search(unit(2, DK, r), 5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    sql = live_ids(store, tenant)
    assert set(bank.all()[0].tolist()) == sql
    # and search agrees with an exact search over the SQL rows
    with store.db.read() as s:
        rows = s.query(MemorySlot.id, MemorySlot.key).filter_by(bank_id=bank.bank_id).all()
    ids = torch.tensor([r[0] for r in rows])
    keys = torch.from_numpy(np.stack([np.frombuffer(r[1], "<f4") for r in rows]))
    q = unit(3, DK, 77)
    exact = ids[(q @ keys.T).topk(5, dim=1).indices]
    assert bank.search(q, 5)[1].tolist() == exact.tolist()
    # a second Storage (another replica) rebuilt from SQL sees exactly the same
    other = Storage.from_urls(store.db.url)
    assert set(open_bank(other, tenant).all()[0].tolist()) == sql
    other.close()


def test_cross_tenant_slots_are_invisible(store: Storage, tenant: str) -> None:
    other = store.tenants.create("other").id
    ns = namespace("user", "shared-name")
    mine = open_bank(store, tenant, ns)
    ids = mine.add(unit(5, DK, 6), torch.randn(5, DV), torch.ones(5)).tolist()
    theirs = open_bank(store, other, ns)  # same namespace string, other tenant
    assert len(theirs) == 0
    assert theirs.search(unit(1, DK, 6), 5)[1].tolist() == [[-1] * 5]
    assert store.slots.list(other) == []
    with pytest.raises(NotFound):
        store.slots.get(other, ids[0])
    assert store.slots.evict(other, ids) == 0
    assert store.slots.delete_namespace(other, ns) == 0
    assert len(mine) == 5
    assert store.slots.delete_namespace(tenant, ns) == 5
    assert len(mine) == 0


def test_bank_dims_are_checked(store: Storage, tenant: str) -> None:
    open_bank(store, tenant)
    with pytest.raises(Exception, match="d_key"):
        store.slots.bank(tenant, "user:u1", 2, d_key=DK + 1, d_value=DV)


def test_deleting_tenant_or_session_reaches_open_indexes(store: Storage, tenant: str) -> None:
    sid = store.sessions.create(tenant).id
    session_bank = open_bank(store, tenant, namespace("session", sid))
    user_bank = open_bank(store, tenant, "user:u9")
    keys = unit(6, DK, 8)
    session_bank.add(keys, torch.randn(6, DV), torch.ones(6))
    user_ids = user_bank.add(keys, torch.randn(6, DV), torch.ones(6)).tolist()
    assert store.delete_session(tenant, sid)
    assert len(session_bank) == 0 and session_bank.search(keys[:1], 3)[1].tolist() == [[-1] * 3]
    assert set(user_bank.all()[0].tolist()) == set(user_ids)
    assert store.delete_tenant(tenant)
    assert user_bank.search(keys[:1], 3)[1].tolist() == [[-1] * 3]  # the handle still held
    assert store.slots.list(tenant) == []
