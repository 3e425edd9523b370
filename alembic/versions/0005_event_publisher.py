"""Who published each event: the ``sub`` of the publishing token (NULL when open).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch copy: nullable with no default, it leaves
    # existing rows NULL without rewriting the log, on SQLite and PostgreSQL alike.
    op.add_column("events", sa.Column("publisher", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("publisher")
