"""Retention: how far each topic has been pruned, so a resume can report the gap.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every event of the topic with seq <= pruned_through_seq has been deleted.
    with op.batch_alter_table("topics") as batch:
        batch.add_column(
            sa.Column("pruned_through_seq", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("topics") as batch:
        batch.drop_column("pruned_through_seq")
