"""vector_banks.fingerprint: the model whose Retention Layer wrote a bank's slots

Revision ID: 0005_bank_fingerprints
Revises: 0004_memory_values
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_bank_fingerprints"
down_revision = "0004_memory_values"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vector_banks", sa.Column("fingerprint", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vector_banks") as batch:
        batch.drop_column("fingerprint")
