"""jobs: durable jobs, schedules, handler progress, subscriptions delivery

Revision ID: 0012_jobs
Revises: 0011_audit
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_jobs"
down_revision = "0011_audit"
branch_labels = None
depends_on = None

_TS = sa.DateTime()
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("pk", _PK, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_at", _TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("locked_by", sa.String(100), nullable=True),
        sa.Column("locked_until", _TS, nullable=True),
        sa.Column("lease", sa.String(32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_job")),
    )
    op.create_index("uq_job_key", "job", ["key"], unique=True)
    op.create_index("ix_job_state_run_at", "job", ["state", "run_at"])
    op.create_table(
        "job_schedule",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("cron", sa.String(100), nullable=False),
        sa.Column("next_run", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_schedule")),
    )
    op.create_table(
        "subscription",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=True),
        sa.Column("payload", sa.String(64), nullable=True),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription")),
    )
    op.create_index(
        "ix_subscription_resource_type_status", "subscription", ["resource_type", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_subscription_resource_type_status", table_name="subscription")
    op.drop_table("subscription")
    op.drop_table("job_schedule")
    op.drop_index("ix_job_state_run_at", table_name="job")
    op.drop_index("uq_job_key", table_name="job")
    op.drop_table("job")
