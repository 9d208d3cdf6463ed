"""Migrations upgrade and downgrade on PostgreSQL and SQLite, and match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from storage import migrate
from storage.db import normalize_url
from storage.models import Base


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
