"""0003_memories on PostgreSQL and SQLite: slots that held a copy of their text become
slots of a memory (referenced, never copied), and the downgrade puts the copies back."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from storage import migrate
from storage.db import normalize_url

MESSAGE = "My dog is called Rex and he likes the sea."


@pytest.fixture(params=["postgres", "sqlite"])
def empty_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


def _seed_0001(conn) -> None:
    """The old layout: two layers' slots of one message each hold the whole text, plus
    two slots written from text alone (no message)."""
    now = "2026-01-01 00:00:00+00:00"
    conn.execute(text(f"INSERT INTO tenants (id, name, created_at) VALUES ('t1','t','{now}')"))
    conn.execute(
        text(
            "INSERT INTO sessions (id, tenant_id, title, meta, version, created_at, updated_at)"
            f" VALUES ('s1','t1','','{{}}',1,'{now}','{now}')"
        )
    )
    conn.execute(
        text(
            "INSERT INTO messages (id, tenant_id, session_id, seq, role, content, meta,"
            f" created_at) VALUES (5,'t1','s1',0,'user',:c,'{{}}','{now}')"
        ),
        {"c": MESSAGE},
    )
    for bank, layer in ((1, 0), (2, 1)):
        conn.execute(
            text(
                "INSERT INTO vector_banks (id, tenant_id, kind, namespace, layer, dim, d_value,"
                f" last_seq, clock, created_at) VALUES ({bank},'t1','slot','user:u1',{layer},"
                f"1,1,0,0,'{now}')"
            )
        )
    rows = [(1, 5, MESSAGE), (1, 5, MESSAGE), (2, 5, MESSAGE), (1, None, "tea"), (2, None, "tea")]
    for i, (bank, message, copy) in enumerate(rows, start=1):
        conn.execute(
            text(
                "INSERT INTO memory_slots (id, bank_id, tenant_id, key, value, gate, reads,"
                " last_read, created_tick, session_id, message_id, span_start, span_end, text,"
                f" created_at) VALUES ({i},{bank},'t1',:k,:v,0.5,0,-1,0,'s1',:m,3,4,:t,'{now}')"
            ),
            {"k": b"k", "v": b"v", "m": message, "t": copy},
        )


def test_existing_slots_become_memories_and_back(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0001")
    engine = create_engine(normalize_url(empty_url))
    try:
        with engine.begin() as conn:
            _seed_0001(conn)
        migrate.upgrade(empty_url, "0003_memories")
        with engine.connect() as conn:
            cols = set(conn.execute(text("SELECT * FROM memory_slots")).keys())
            assert "text" not in cols and "memory_id" in cols
            memories = conn.execute(
                text(
                    "SELECT id, user_id, message_id, text, span_start, span_end, slots"
                    " FROM memories ORDER BY slots DESC"
                )
            ).all()
            slots = dict(conn.execute(text("SELECT id, memory_id FROM memory_slots")).all())
            spans = set(conn.execute(text("SELECT span_start, span_end FROM memory_slots")).all())
            events = conn.execute(text("SELECT op FROM memory_events")).scalars().all()
        by_message, by_text = memories
        assert by_message[1:] == ("u1", 5, None, 0, len(MESSAGE), 3)  # referenced, not copied
        assert by_text[1:] == ("u1", None, "tea", 0, 3, 2)  # no message: stored once
        assert {slots[i] for i in (1, 2, 3)} == {by_message[0]}
        assert {slots[i] for i in (4, 5)} == {by_text[0]}
        assert spans == {(0, len(MESSAGE)), (0, 3)}
        assert events == ["written", "written"]
        migrate.downgrade(empty_url, "0001")
        with engine.connect() as conn:
            back = dict(conn.execute(text("SELECT id, text FROM memory_slots")).all())
        assert back == {1: MESSAGE, 2: MESSAGE, 3: MESSAGE, 4: "tea", 5: "tea"}
    finally:
        engine.dispose()
