"""memories.value: a keyed memory's JSON document (the LangGraph store's items)

Revision ID: 0004_memory_values
Revises: 0003_memories
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_memory_values"
down_revision = "0003_memories"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("memories", sa.Column("value", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("memories") as batch:
        batch.drop_column("value")
