"""Alembic environment: one migration list for PostgreSQL and SQLite.

The URL comes from the Alembic config (``storage.migrate`` sets it) or, for the plain
``alembic`` command, from ``MEMSVC_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context

from storage.db import make_engine, normalize_url
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("MEMSVC_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or MEMSVC_DATABASE_URL")
    return normalize_url(url)


def run_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Apply migrations over a live connection (batch mode so SQLite can ALTER)."""
    engine = make_engine(_url(), pool_size=1)
    try:
        with engine.connect() as conn:
            context.configure(
                connection=conn,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
