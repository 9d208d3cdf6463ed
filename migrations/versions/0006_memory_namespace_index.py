"""memories (tenant_id, namespace, created_at): a namespace's live memories by index

The memory note of a model without memory layers reads a namespace's memories (or only
their version, when it holds them) on every turn; without this index that was a scan of
the tenant's memories.

Revision ID: 0006_memory_namespace_index
Revises: 0005_bank_fingerprints
"""

from __future__ import annotations

from alembic import op

revision = "0006_memory_namespace_index"
down_revision = "0005_bank_fingerprints"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_memories_namespace", "memories", ["tenant_id", "namespace", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_memories_namespace", table_name="memories")
