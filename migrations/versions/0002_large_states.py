"""large states: chunked, compressed state and snapshot blobs

Revision ID: 0002_large_states
Revises: 0001

- ``state_chunks`` / ``snapshot_chunks``: the stored frames of large blobs (see
  ``storage.state_codec``), one row per frame, deleted with their session / snapshot;
- ``session_states`` and ``state_snapshots`` gain ``codec`` (NULL: a raw blob, as every row
  written before), ``n_chunks`` (0: the frames are inline in ``blob``) and ``stored_size``;
  snapshots also ``size`` (the decoded blob's length), filled in for existing rows.

Old rows keep their SHA-256 checksums: storage reads both kinds. Downgrading turns inline
raw rows back into what 0001 reads (SHA-256 of the blob) and deletes the states and
snapshots it could not read (compressed or chunked ones): a lost state means a session
must be replayed, a lost snapshot is a cache miss.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002_large_states"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    for table in ("session_states", "state_snapshots"):
        op.add_column(table, sa.Column("codec", sa.JSON(), nullable=True))
        op.add_column(
            table, sa.Column("n_chunks", sa.Integer(), server_default="0", nullable=False)
        )
        op.add_column(
            table, sa.Column("stored_size", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.add_column(
        "state_snapshots", sa.Column("size", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.execute("UPDATE session_states SET stored_size = size")
    op.execute("UPDATE state_snapshots SET size = length(blob), stored_size = length(blob)")

    op.create_table(
        "state_chunks",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_state_chunks_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_state_chunks_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "version", "idx", name=op.f("pk_state_chunks")),
    )
    op.create_index(op.f("ix_state_chunks_tenant_id"), "state_chunks", ["tenant_id"])
    op.create_table(
        "snapshot_chunks",
        sa.Column("snapshot_id", BigId, nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["state_snapshots.id"],
            name=op.f("fk_snapshot_chunks_snapshot_id_state_snapshots"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_snapshot_chunks_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("snapshot_id", "idx", name=op.f("pk_snapshot_chunks")),
    )
    op.create_index(op.f("ix_snapshot_chunks_tenant_id"), "snapshot_chunks", ["tenant_id"])
    if op.get_bind().dialect.name == "postgresql":
        # frames are zstd output already: pglz would only burn CPU on every write
        for table in ("state_chunks", "snapshot_chunks"):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")


def _is_raw(codec: dict | None) -> bool:
    """Whether a codec's one frame is the blob itself (no compression, no transform)."""
    return not codec or (codec.get("z") == "none" and all(f[0] == "r" for f in codec.get("fr", [])))


def downgrade() -> None:
    bind = op.get_bind()
    for table, key in (("session_states", "session_id"), ("state_snapshots", "id")):
        t = sa.table(
            table,
            sa.column(key),
            sa.column("blob", sa.LargeBinary()),
            sa.column("checksum"),
            sa.column("codec", sa.JSON()),
            sa.column("n_chunks"),
        )
        rows = bind.execute(sa.select(t.c[key], t.c.codec, t.c.n_chunks)).all()
        for row_key, codec, n_chunks in rows:
            if n_chunks or not _is_raw(codec):
                bind.execute(sa.delete(t).where(t.c[key] == row_key))
                continue
            blob = bind.scalar(sa.select(t.c.blob).where(t.c[key] == row_key))
            digest = hashlib.sha256(bytes(blob)).hexdigest()
            bind.execute(sa.update(t).where(t.c[key] == row_key).values(checksum=digest))
    op.drop_index(op.f("ix_snapshot_chunks_tenant_id"), table_name="snapshot_chunks")
    op.drop_table("snapshot_chunks")
    op.drop_index(op.f("ix_state_chunks_tenant_id"), table_name="state_chunks")
    op.drop_table("state_chunks")
    op.drop_column("state_snapshots", "size")
    for table in ("session_states", "state_snapshots"):
        for column in ("stored_size", "n_chunks", "codec"):
            op.drop_column(table, column)
