"""A turn's bank view: in-memory reads and writes, merged into SQL with the turn's commit.

Two turns of one user in two sessions share the user's bank without a common lock: their
appends and read counts commute, a blend that meets another turn's blend is merged
(deltas add up), a blend of a slot another turn removed is dropped (removal wins), and
both commit orders, and both commits at once on Postgres, give the same bank.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from storage import Storage
from storage.sessions import MessageIn
from storage.slot_view import BankView

FP = "retnet-test-fp"
D_KEY, D_VALUE = 4, 3


@pytest.fixture
def pg_store(migrated_pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator:
    st = Storage.from_urls(migrated_pg_url, redis_url, redis_prefix=redis_prefix)
    yield st
    st.close()


def _bank(store: Storage, tenant: str):
    bank = store.slots.bank(tenant, "user:u1", 1, d_key=D_KEY, d_value=D_VALUE)
    gen = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(5, D_KEY, generator=gen), dim=-1)
    ids = bank.add(keys, torch.randn(5, D_VALUE, generator=gen), torch.full((5,), 0.5))
    return bank, ids.tolist()


def _turn_a(view: BankView, ids: list[int]) -> None:
    view.touch(torch.tensor([ids[0]]))
    view.add(torch.eye(D_KEY)[:2], torch.ones(2, D_VALUE), torch.full((2,), 0.9))
    k, v = view.fetch(torch.tensor([ids[1]]))
    view.update(torch.tensor([ids[1]]), k, v + 1.0)  # a blend: +1 on every value entry
    view.remove(torch.tensor([ids[2]]))


def _turn_b(view: BankView, ids: list[int]) -> None:
    view.touch(torch.tensor([ids[0]]))
    view.touch(torch.tensor([ids[0], ids[3]]))
    view.add(torch.eye(D_KEY)[:3], torch.zeros(3, D_VALUE), torch.full((3,), 0.8))
    k, v = view.fetch(torch.tensor([ids[1]]))
    view.update(torch.tensor([ids[1]]), k, v + 10.0)
    k, v = view.fetch(torch.tensor([ids[2]]))
    view.update(torch.tensor([ids[2]]), k, v * 2)  # the slot turn A removes


def _commit(store: Storage, tenant: str, sid: str, view: BankView) -> None:
    store.commit_turn(
        tenant,
        sid,
        [MessageIn("user", "q"), MessageIn("assistant", "a")],
        b"state",
        fingerprint=FP,
        position=4,
        expected_version=0,
        slot_changes=[view.changes()],
    )


def _snapshot(store: Storage, bank) -> dict:
    recs = bank.records()
    _, keys, values = bank.all()
    assert [r.id for r in recs] == bank.all()[0].tolist()  # the index equals SQL: no fork
    return {
        "count": len(recs),
        "reads": sorted(r.reads for r in recs),
        "values": sorted(np.round(values.numpy(), 4).tolist()),
        "ids": [r.id for r in recs],
    }


def _run(store: Storage, order: str) -> tuple[dict, list[int]]:
    tenant = store.tenants.create(f"views {order}").id
    bank, ids = _bank(store, tenant)
    sa, sb = store.sessions.create(tenant).id, store.sessions.create(tenant).id
    va, vb = store.bank_views([bank])[0], store.bank_views([bank])[0]
    _turn_a(va, ids)
    _turn_b(vb, ids)
    if order == "concurrent":
        gate = threading.Barrier(2)
        errors: list[BaseException] = []

        def go(sid: str, view: BankView) -> None:
            try:
                gate.wait()
                _commit(store, tenant, sid, view)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=go, args=a) for a in ((sa, va), (sb, vb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    else:
        pairs = [(sa, va), (sb, vb)] if order == "ab" else [(sb, vb), (sa, va)]
        for sid, view in pairs:
            _commit(store, tenant, sid, view)
    return _snapshot(store, bank), ids


def test_two_sessions_of_one_user_merge_their_bank_changes(pg_store: Storage) -> None:
    results = {order: _run(pg_store, order) for order in ("ab", "ba", "concurrent")}
    for snap, ids in results.values():
        assert snap["count"] == 5 - 1 + 2 + 3  # both turns' appends, A's removal
        assert ids[2] not in snap["ids"]  # removal wins over B's blend
        assert snap["reads"].count(3) == 1 and snap["reads"].count(1) == 1  # 1+2 and 1
    first = results["ab"][0]
    for snap, _ in results.values():  # the same bank whatever the order (ids aside)
        assert snap["values"] == first["values"] and snap["reads"] == first["reads"]


def test_blend_deltas_add_up_when_both_turns_blend_one_slot(pg_store: Storage) -> None:
    tenant = pg_store.tenants.create("views blend").id
    bank, ids = _bank(pg_store, tenant)
    before = bank.fetch(torch.tensor([ids[1]]))[1]
    sa, sb = pg_store.sessions.create(tenant).id, pg_store.sessions.create(tenant).id
    va, vb = pg_store.bank_views([bank])[0], pg_store.bank_views([bank])[0]
    _turn_a(va, ids)
    _turn_b(vb, ids)
    _commit(pg_store, tenant, sa, va)
    _commit(pg_store, tenant, sb, vb)
    after = bank.fetch(torch.tensor([ids[1]]))[1]
    torch.testing.assert_close(after, before + 11.0)  # +1 from A and +10 from B: none lost


def test_a_view_reads_in_memory_and_sees_committed_evictions(pg_store: Storage) -> None:
    tenant = pg_store.tenants.create("views evict").id
    bank, ids = _bank(pg_store, tenant)
    bank.evict([ids[4]])  # committed before the turn starts
    view = pg_store.bank_views([bank])[0]
    assert ids[4] not in view.all()[0].tolist()
    engine = pg_store.db.engine
    seen: list[str] = []

    def count(*_a) -> None:
        seen.append("sql")

    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", count)
    try:
        _, got = view.search(torch.randn(3, D_KEY), 10)
        view.touch(got[got >= 0])
        view.add(torch.eye(D_KEY)[:1], torch.ones(1, D_VALUE), torch.ones(1))
        assert len(view) == 5
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert seen == []  # reads, touches and writes of a turn never reach SQL
    assert ids[4] not in got.tolist()
