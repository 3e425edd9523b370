"""The event log, topics, subscriptions, instances and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    log_head = op.create_table(
        "log_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(log_head, [{"id": 1, "position": 0}])
    op.create_table(
        "topics",
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_published_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "events",
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("exclude_id", sa.String(255), nullable=True),
        sa.Column("published_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "seq", name="pk_events"),
        sa.UniqueConstraint("position", name="uq_events_position"),
    )
    op.create_index("ix_events_published_at", "events", ["topic", "published_at"])
    op.create_table(
        "subscriptions",
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("subscriber_id", sa.String(255), nullable=False),
        sa.Column("connection_id", sa.String(64), nullable=True),
        sa.Column("instance_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "subscriber_id", name="pk_subscriptions"),
    )
    op.create_index("ix_subscriptions_subscriber", "subscriptions", ["subscriber_id"])
    op.create_index("ix_subscriptions_instance", "subscriptions", ["instance_id"])
    op.create_table(
        "instances",
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    for table in ("idempotency_keys", "instances", "subscriptions", "events", "topics", "log_head"):
        op.drop_table(table)
