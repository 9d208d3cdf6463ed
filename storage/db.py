"""Engines and transactions for PostgreSQL (psycopg 3) and SQLite (the embedded default).

:class:`Database` hands out SQLAlchemy ORM sessions in two flavours:

- :meth:`Database.read`: a plain transaction;
- :meth:`Database.write`: on SQLite a ``BEGIN IMMEDIATE`` transaction, so a writer takes
  the database's write lock before it reads and never fails half-way with "database is
  locked" on upgrade; on PostgreSQL the same as ``read`` (row locks do the work).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for bare ``postgresql://`` / ``postgres://`` URLs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def is_sqlite(url: str) -> bool:
    """True for SQLite URLs."""
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def _setup_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout, and explicit BEGIN [IMMEDIATE] under our control."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def make_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> Engine:
    """An engine for ``url``; creates the parent directory of a SQLite file."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=2 * pool_size,
        )
        _setup_sqlite(engine)
        return engine
    return create_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True
    )


class Database:
    """One engine plus transaction helpers shared by every manager."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = normalize_url(url)
        self.engine = engine if engine is not None else make_engine(self.url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session in a transaction that commits on success and rolls back on error."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """Like :meth:`read`, but takes SQLite's write lock at BEGIN."""
        if not self.sqlite:
            with self.read() as s:
                yield s
            return
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with Session(bind=conn, expire_on_commit=False) as s, s.begin():
                yield s

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
