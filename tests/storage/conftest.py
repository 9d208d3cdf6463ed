"""Real-service fixtures for storage tests (reusable by the service's tests).

- ``pg_url``: a fresh, empty PostgreSQL database for this test (dropped afterwards).
- ``migrated_pg_url``: a fresh database at the newest migration (cloned from a template
  migrated once per test session, so it costs one ``CREATE DATABASE``).
- ``sqlite_url`` / ``migrated_sqlite_url``: a SQLite file under the test's tmp_path.
- ``db_url``: parametrised over ``postgres`` and ``sqlite``, migrated.
- ``redis_url`` + ``redis_prefix``: the shared Redis and a key prefix unique to the test;
  every key under the prefix is deleted afterwards.
- ``store``: a :class:`storage.Storage` over ``db_url`` and Redis (Postgres) or the
  in-process LRU (SQLite, the embedded default).

Servers come from ``MEMSVC_TEST_PG_ADMIN`` (a database to connect to for CREATE DATABASE)
and ``MEMSVC_TEST_REDIS``; defaults match ../shared/SERVICES.md. If a server is down the
tests fail with a clear message; they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from storage_testutil import flush_prefix

from storage import Storage, migrate

PG_ADMIN = os.environ.get(
    "MEMSVC_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MEMSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the admin database (for CREATE / DROP DATABASE)."""
    engine = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # fail loudly: these tests need the real server
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is not reachable ({exc}); see SERVICES.md")
    yield engine
    engine.dispose()


def _db_url(name: str) -> str:
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


def _drop(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_template(pg_admin: Engine) -> Iterator[str]:
    """A database at the newest migration, used as CREATE DATABASE ... TEMPLATE."""
    name = _unique("memsvc_tpl")
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        migrate.upgrade(_db_url(name))
        yield name
    finally:
        _drop(pg_admin, name)


@pytest.fixture
def pg_url(pg_admin: Engine) -> Iterator[str]:
    """A fresh empty PostgreSQL database, dropped after the test."""
    name = _unique("memsvc_test")
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield _db_url(name)
    _drop(pg_admin, name)


@pytest.fixture
def migrated_pg_url(pg_admin: Engine, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at the newest migration, dropped after the test."""
    name = _unique("memsvc_test")
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _db_url(name)
    _drop(pg_admin, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 'memsvc.db'}"


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite_tpl") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def migrated_sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """A SQLite file at the newest migration (a copy of a session-wide template)."""
    path = tmp_path / "memsvc.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database: PostgreSQL or SQLite."""
    name = "migrated_pg_url" if request.param == "postgres" else "migrated_sqlite_url"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis (checked with a real PING)."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}); see SERVICES.md")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"memsvc-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    flush_prefix(redis_url, prefix)


@pytest.fixture
def store(db_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Storage]:
    """Storage over ``db_url``: Postgres + Redis, or SQLite + in-process LRU."""
    use_redis = not db_url.startswith("sqlite")
    st = Storage.from_urls(
        db_url,
        redis_url if use_redis else None,
        redis_prefix=redis_prefix,
        index_dir=tmp_path / "indexes",
    )
    yield st
    st.close()


@pytest.fixture
def tenant(store: Storage) -> str:
    """A fresh tenant in ``store``."""
    return store.tenants.create("test tenant").id
