"""Reading and writing the stored frames of a blob as SQL rows (chunk tables).

Large states and snapshots keep their frames (``storage.state_codec``) one per row in
``state_chunks`` / ``snapshot_chunks``; this module is the SQL for both. On PostgreSQL the
frames are fetched through a binary-format cursor on the session's own connection (same
transaction): the default text format sends bytea as hex, twice the bytes, and parsing
it costs more than the transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session


def insert_frames(
    s: Session,
    table: Table,
    key: dict[str, Any],
    frames: Sequence[bytes],
    tenant_id: str,
    start: int = 0,
) -> None:
    """Insert ``frames`` as rows ``{**key, idx: start + i, data: frame}`` (one executemany)."""
    if frames:
        rows = [
            {**key, "idx": start + i, "tenant_id": tenant_id, "data": f}
            for i, f in enumerate(frames)
        ]
        s.execute(insert(table), rows)


def fetch_frames(s: Session, table: Table, key: dict[str, Any]) -> list[bytes]:
    """The ``data`` of the rows matching ``key`` (column = value), ordered by ``idx``."""
    bind = s.connection()
    if bind.dialect.name == "postgresql":
        where = " AND ".join(f"{c} = %s" for c in key)
        sql = f"SELECT data FROM {table.name} WHERE {where} ORDER BY idx"
        with bind.connection.driver_connection.cursor(binary=True) as cur:  # type: ignore[union-attr]
            cur.execute(sql, list(key.values()))
            return [bytes(r[0]) for r in cur.fetchall()]
    cond = [table.c[c] == v for c, v in key.items()]
    return [bytes(b) for b in s.scalars(select(table.c.data).where(*cond).order_by(table.c.idx))]


def delete_frames(s: Session, table: Table, *conditions: Any) -> int:
    """Delete the rows matching ``conditions``; how many went."""
    return int(s.execute(delete(table).where(*conditions)).rowcount or 0)
