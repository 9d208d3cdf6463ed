"""memories: slots reference a memory and their own span, never a copy of the text

Revision ID: 0003_memories
Revises: 0002_large_states

Existing slots are grouped into memories: one per (tenant, namespace, message) for
slots with a message, one per (tenant, namespace, text) for slots written from text
alone. A message-backed memory spans the whole message; its old token spans cannot be
mapped to characters without the tokenizer, so migrated slots take their memory's span.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003_memories"
down_revision = "0002_large_states"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_slots = sa.table(
    "memory_slots",
    sa.column("id", sa.BigInteger),
    sa.column("bank_id", sa.BigInteger),
    sa.column("tenant_id", sa.String),
    sa.column("session_id", sa.String),
    sa.column("message_id", sa.BigInteger),
    sa.column("span_start", sa.Integer),
    sa.column("span_end", sa.Integer),
    sa.column("text", sa.Text),
    sa.column("memory_id", sa.String),
    sa.column("gate", sa.Float),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_banks = sa.table("vector_banks", sa.column("id", sa.BigInteger), sa.column("namespace", sa.String))
_messages = sa.table("messages", sa.column("id", sa.BigInteger), sa.column("content", sa.Text))
_memories = sa.table(
    "memories",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("user_id", sa.String),
    sa.column("namespace", sa.String),
    sa.column("session_id", sa.String),
    sa.column("message_id", sa.BigInteger),
    sa.column("span_start", sa.Integer),
    sa.column("span_end", sa.Integer),
    sa.column("text", sa.Text),
    sa.column("gate", sa.Float),
    sa.column("slots", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
_events = sa.table(
    "memory_events",
    sa.column("tenant_id", sa.String),
    sa.column("user_id", sa.String),
    sa.column("memory_id", sa.String),
    sa.column("op", sa.String),
    sa.column("cause", sa.String),
    sa.column("at", sa.DateTime(timezone=True)),
)


def _create_tables() -> None:
    op.create_table(
        "memories",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("namespace", sa.String(length=200), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("span_start", sa.Integer(), nullable=False),
        sa.Column("span_end", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("collection", sa.String(length=1000), nullable=True),
        sa.Column("key", sa.String(length=500), nullable=True),
        sa.Column("gate", sa.Float(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_memories_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memories")),
        sa.UniqueConstraint(
            "tenant_id",
            "user_id",
            "collection",
            "key",
            name=op.f("uq_memories_tenant_id_user_id_collection_key"),
        ),
    )
    with op.batch_alter_table("memories", schema=None) as b:
        b.create_index("ix_memories_owner", ["tenant_id", "user_id", "created_at"], unique=False)
        b.create_index(b.f("ix_memories_session_id"), ["session_id"], unique=False)
        b.create_index(b.f("ix_memories_message_id"), ["message_id"], unique=False)
    op.create_table(
        "memory_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("memory_id", sa.String(length=64), nullable=False),
        sa.Column("op", sa.String(length=16), nullable=False),
        sa.Column("cause", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_memory_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memory_events")),
    )
    with op.batch_alter_table("memory_events", schema=None) as b:
        b.create_index("ix_memory_events_owner", ["tenant_id", "user_id", "id"], unique=False)
        b.create_index(b.f("ix_memory_events_memory_id"), ["memory_id"], unique=False)


def _user_of(namespace: str) -> str | None:
    return namespace[len("user:") :] if namespace.startswith("user:") else None


def _group_slots(conn: sa.Connection) -> None:
    """Create one memory per written span of the existing slots and point them at it."""
    rows = conn.execute(
        sa.select(
            _slots.c.id,
            _slots.c.tenant_id,
            _slots.c.session_id,
            _slots.c.message_id,
            _slots.c.text,
            _slots.c.gate,
            _slots.c.created_at,
            _banks.c.namespace,
            _messages.c.content,
        )
        .select_from(
            _slots.join(_banks, _banks.c.id == _slots.c.bank_id).outerjoin(
                _messages, _messages.c.id == _slots.c.message_id
            )
        )
        .where(sa.or_(_slots.c.message_id.is_not(None), _slots.c.text.is_not(None)))
        .order_by(_slots.c.id)
    ).all()
    groups: dict[tuple, dict] = {}
    for r in rows:
        by_message = r.message_id is not None and r.content is not None
        gkey = (r.tenant_id, r.namespace, "m", r.message_id) if by_message else None
        if gkey is None:
            gkey = (r.tenant_id, r.namespace, "t", r.text or "")
        g = groups.setdefault(gkey, {"row": r, "ids": [], "gates": [], "by_message": by_message})
        g["ids"].append(r.id)
        g["gates"].append(float(r.gate))
    now = datetime.now(UTC)
    for g in groups.values():
        r, mid = g["row"], uuid.uuid4().hex
        text = None if g["by_message"] else (r.text or "")
        end = len(r.content if g["by_message"] else text)
        conn.execute(
            sa.insert(_memories).values(
                id=mid,
                tenant_id=r.tenant_id,
                user_id=_user_of(r.namespace),
                namespace=r.namespace,
                session_id=r.session_id,
                message_id=r.message_id if g["by_message"] else None,
                span_start=0,
                span_end=end,
                text=text,
                gate=sum(g["gates"]) / len(g["gates"]),
                slots=len(g["ids"]),
                created_at=r.created_at or now,
                updated_at=now,
            )
        )
        conn.execute(
            sa.insert(_events).values(
                tenant_id=r.tenant_id,
                user_id=_user_of(r.namespace),
                memory_id=mid,
                op="written",
                cause="migrated from slots (0003_memories)",
                at=now,
            )
        )
        ids = g["ids"]
        for i in range(0, len(ids), 900):
            conn.execute(
                sa.update(_slots)
                .where(_slots.c.id.in_(ids[i : i + 900]))
                .values(memory_id=mid, span_start=0, span_end=end)
            )


def upgrade() -> None:
    _create_tables()
    with op.batch_alter_table(
        "memory_slots", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as b:
        b.add_column(sa.Column("memory_id", sa.String(length=64), nullable=True))
        b.create_index(b.f("ix_memory_slots_memory_id"), ["memory_id"], unique=False)
    _group_slots(op.get_bind())
    with op.batch_alter_table(
        "memory_slots", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as b:
        b.drop_column("text")


def downgrade() -> None:
    with op.batch_alter_table(
        "memory_slots", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as b:
        b.add_column(sa.Column("text", sa.Text(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_memories.c.id, _memories.c.text, _messages.c.content).select_from(
            _memories.outerjoin(_messages, _messages.c.id == _memories.c.message_id)
        )
    ).all()
    for mid, text, content in rows:  # the old layout: every slot holds its memory's text
        source = text if text is not None else content
        conn.execute(sa.update(_slots).where(_slots.c.memory_id == mid).values(text=source))
    with op.batch_alter_table(
        "memory_slots", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as b:
        b.drop_index(b.f("ix_memory_slots_memory_id"))
        b.drop_column("memory_id")
    op.drop_table("memory_events")
    op.drop_table("memories")
