"""notify: notification deliveries, preferences, in-app inbox

Revision ID: 0013_notify
Revises: 0012_jobs
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_notify"
down_revision = "0012_jobs"
branch_labels = None
depends_on = None

_TS = sa.DateTime()
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notification",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("locale", sa.String(10), nullable=False),
        sa.Column("urgency", sa.String(10), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("rendered", sa.Text(), nullable=False),
        sa.Column("inapp", sa.Integer(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("skipped", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_by", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("communication_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("not_before", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
    )
    op.create_index("uq_notification_key", "notification", ["key"], unique=True)
    op.create_index("ix_notification_status_created_at", "notification", ["status", "created_at"])
    op.create_table(
        "notify_attempt",
        sa.Column("pk", _PK, autoincrement=True, nullable=False),
        sa.Column("notification_id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_notify_attempt")),
    )
    op.create_index("ix_notify_attempt_notification_id", "notify_attempt", ["notification_id"])
    op.create_table(
        "notify_inbox",
        sa.Column("pk", _PK, autoincrement=True, nullable=False),
        sa.Column("notification_id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("urgency", sa.String(10), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("read_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_notify_inbox")),
    )
    op.create_index(
        "uq_notify_inbox_notification_id", "notify_inbox", ["notification_id"], unique=True
    )
    op.create_index("ix_notify_inbox_owner_pk", "notify_inbox", ["owner", "pk"])
    op.create_table(
        "notify_preference",
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("disabled", sa.Text(), nullable=False),
        sa.Column("quiet_start", sa.String(5), nullable=True),
        sa.Column("quiet_end", sa.String(5), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_notify_preference")),
    )


def downgrade() -> None:
    op.drop_table("notify_preference")
    op.drop_index("ix_notify_inbox_owner_pk", table_name="notify_inbox")
    op.drop_index("uq_notify_inbox_notification_id", table_name="notify_inbox")
    op.drop_table("notify_inbox")
    op.drop_index("ix_notify_attempt_notification_id", table_name="notify_attempt")
    op.drop_table("notify_attempt")
    op.drop_index("ix_notification_status_created_at", table_name="notification")
    op.drop_index("uq_notification_key", table_name="notification")
    op.drop_table("notification")
