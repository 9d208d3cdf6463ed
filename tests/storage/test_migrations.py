"""Migrations upgrade and downgrade on PostgreSQL and SQLite, and match the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, delete, insert, inspect, text

from storage import migrate
from storage.db import normalize_url
from storage.models import Base, ChatSession, Document, Tenant, VectorBank, utcnow


@pytest.fixture(params=["postgres", "sqlite"])
def empty_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


def tables(url: str) -> set[str]:
    engine = create_engine(normalize_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_then_downgrade(empty_url: str) -> None:
    assert migrate.current_revision(empty_url) is None
    migrate.upgrade(empty_url)
    assert migrate.current_revision(empty_url) == migrate.head_revision()
    assert tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}
    migrate.downgrade(empty_url)
    assert migrate.current_revision(empty_url) is None
    assert tables(empty_url) <= {"alembic_version"}
    migrate.upgrade(empty_url)  # and back up again
    assert tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_migrations_match_models(db_url: str) -> None:
    engine = create_engine(normalize_url(db_url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


# Tables whose integer ids must never be reused (the slot protocol promises it for slots;
# messages and passages are named in provenance; banks key the change log and the saved
# FAISS indexes). SQLite reuses the highest rowid after a delete unless the table is
# declared AUTOINCREMENT; Postgres sequences never go back.
NEVER_REUSED = {"memory_slots", "passages", "messages", "vector_banks", "state_snapshots"}


def autoincrement_tables(engine_url: str) -> set[str]:
    engine = create_engine(normalize_url(engine_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type='table'"))
            return {name for name, sql in rows if "AUTOINCREMENT" in (sql or "").upper()}
    finally:
        engine.dispose()


def test_sqlite_ids_are_autoincrement_in_migration_and_models(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    """compare_metadata cannot see sqlite_autoincrement, so compare the DDL itself."""
    from_models = f"sqlite:///{tmp_path / 'models.db'}"
    engine = create_engine(from_models)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert autoincrement_tables(migrated_sqlite_url) == NEVER_REUSED
    assert autoincrement_tables(from_models) == NEVER_REUSED


@pytest.mark.parametrize("table", sorted(NEVER_REUSED))
def test_deleting_the_highest_id_does_not_free_it(db_url: str, table: str) -> None:
    """Insert two rows, delete the highest, insert again: the new id is larger."""
    engine = create_engine(normalize_url(db_url))
    t = Base.metadata.tables[table]
    try:
        with engine.begin() as conn:
            conn.execute(insert(Tenant).values(id="t1", name="t", created_at=utcnow()))
            conn.execute(
                insert(VectorBank).values(
                    id=10**6,
                    tenant_id="t1",
                    kind="slot",
                    namespace="n",
                    layer=0,
                    dim=1,
                    d_value=1,
                    last_seq=0,
                    clock=0,
                    created_at=utcnow(),
                )
            )
            conn.execute(
                insert(ChatSession).values(
                    id="s1",
                    tenant_id="t1",
                    title="",
                    meta={},
                    version=0,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            conn.execute(
                insert(Document).values(
                    id="d1", tenant_id="t1", name="", meta={}, created_at=utcnow()
                )
            )
        ids = []
        for i in range(3):
            with engine.begin() as conn:
                (new,) = conn.execute(insert(t).values(**_row(table, i)).returning(t.c.id)).one()
                ids.append(new)
                if i == 1:
                    conn.execute(delete(t).where(t.c.id == new))
        assert ids[2] > ids[1] > ids[0]
    finally:
        engine.dispose()


def _row(table: str, i: int) -> dict:
    now = utcnow()
    if table == "memory_slots":
        return dict(
            bank_id=10**6,
            tenant_id="t1",
            key=b"k",
            value=b"v",
            gate=1.0,
            reads=0,
            last_read=-1,
            created_tick=0,
            created_at=now,
        )
    if table == "passages":
        return dict(
            tenant_id="t1",
            bank_id=10**6,
            document_id="d1",
            ordinal=i,
            text="x",
            start=0,
            end=1,
            embedding=b"e",
        )
    if table == "messages":
        return dict(
            tenant_id="t1",
            session_id="s1",
            seq=i,
            role="user",
            content="x",
            meta={},
            created_at=now,
        )
    if table == "vector_banks":
        return dict(
            tenant_id="t1",
            kind="slot",
            namespace=f"n{i}",
            layer=0,
            dim=1,
            d_value=1,
            last_seq=0,
            clock=0,
            created_at=now,
        )
    return dict(
        tenant_id="t1",
        fingerprint="f",
        start_hash="s",
        chain_hash=f"c{i}",
        passage_ids=[],
        blob=b"b",
        checksum="c",
        position=0,
        created_at=now,
        used_at=now,
    )


def test_large_states_migration_keeps_old_rows_and_downgrades_cleanly(empty_url: str) -> None:
    """0001 rows (SHA-256, raw blobs) are read after 0002_large_states; a downgrade gives
    raw rows their SHA-256 back and drops the states 0001 could not read (chunked)."""
    import hashlib

    import torch

    from retnet_core.state import RecurrentState
    from storage import Storage
    from storage.config import StateConfig
    from storage.snapshots import chain_hash
    from storage.state_codec import CodecConfig

    migrate.upgrade(empty_url, "0001")
    old = b"a state written by 0001" * 50
    engine = create_engine(normalize_url(empty_url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(Tenant).values(id="t1", name="t", created_at=utcnow()))
            for sid in ("s1", "s2"):
                conn.execute(
                    insert(ChatSession).values(
                        id=sid,
                        tenant_id="t1",
                        title="",
                        meta={},
                        version=0,
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )
            conn.execute(
                text(
                    "INSERT INTO session_states (session_id, tenant_id, version, blob, checksum, "
                    "fingerprint, position, size, updated_at) VALUES ('s1', 't1', 0, :b, :c, 'fp', "
                    "5, :n, :now)"
                ),
                {"b": old, "c": hashlib.sha256(old).hexdigest(), "n": len(old), "now": utcnow()},
            )
            conn.execute(
                text(
                    "INSERT INTO state_snapshots (tenant_id, fingerprint, start_hash, "
                    "chain_hash, passage_ids, blob, checksum, position, created_at, used_at) "
                    "VALUES ('t1', 'fp', 's', :h, '[1]', :b, :c, 3, :now, :now)"
                ),
                {
                    "h": chain_hash([1]),
                    "b": old,
                    "c": hashlib.sha256(old).hexdigest(),
                    "now": utcnow(),
                },
            )
        migrate.upgrade(empty_url)
        cfg = StateConfig(codec=CodecConfig(min_bytes=2**18, frame_bytes=2**16))
        st = Storage.from_urls(empty_url, state_config=cfg)
        try:
            got = st.states.load("t1", "s1")
            assert got is not None and got.blob == old and got.position == 5
            meta = st.states.meta("t1", "s1")
            assert meta is not None and meta.stored_size == meta.size == len(old)
            assert st.snapshots.get("t1", "fp", "s", [1]).blob == old  # type: ignore[union-attr]
            assert st.snapshots.stored_bytes("t1") == len(old)
            g = torch.Generator().manual_seed(0)
            big = RecurrentState(
                [torch.randn(1, 4, 64, 128, generator=g) for _ in range(4)],
                None,
                torch.tensor([1]),
                "fp",
            ).to_bytes()
            st.states.save("t1", "s2", big, fingerprint="fp", position=1, expected_version=0)
            st.states.save("t1", "s1", b"new raw", fingerprint="fp", position=6, expected_version=0)
            st.snapshots.put("t1", "fp", "s", [2], big, 4)
        finally:
            st.close()
        migrate.downgrade(empty_url, "0001")
        assert "state_chunks" not in tables(empty_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT session_id, blob, checksum FROM session_states"))
            assert [(r[0], bytes(r[1]), r[2]) for r in rows] == [
                ("s1", b"new raw", hashlib.sha256(b"new raw").hexdigest())
            ]
            snaps = conn.execute(text("SELECT chain_hash, checksum FROM state_snapshots")).all()
            assert len(snaps) == 1 and snaps[0][1] == hashlib.sha256(old).hexdigest()
    finally:
        engine.dispose()
