"""Subscription rows made with no stream get an owner and a lifetime.

``subscriptions.owner`` is the ``sub`` of the token that made a row over REST
(NULL: server code, or an open hub), so that one client's stream-less rows can
be counted and capped; ``subscriptions.expires_at`` is when such a row goes if
no stream has taken it over (NULL: never). Without them a row made for a
subscriber that never connects belongs to no stream and no instance, and stays
forever. The indexes serve the heartbeat's sweep and the per-owner count.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs, nullable with no default: existing rows read as made by
    # server code with no lifetime, which is what they were, and no table copy.
    op.add_column("subscriptions", sa.Column("owner", sa.String(255), nullable=True))
    op.add_column("subscriptions", sa.Column("expires_at", sa.DateTime(), nullable=True))
    op.create_index("ix_subscriptions_expires_at", "subscriptions", ["expires_at"])
    op.create_index("ix_subscriptions_owner", "subscriptions", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_subscriptions_owner", table_name="subscriptions")
    op.drop_index("ix_subscriptions_expires_at", table_name="subscriptions")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("owner")
