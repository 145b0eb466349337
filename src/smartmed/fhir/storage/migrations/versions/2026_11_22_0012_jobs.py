"""jobs: durable jobs, schedules, handler progress, subscriptions delivery

Revision ID: 0012_jobs
Revises: 0011_audit
Create Date: 2026-11-22
"""

from __future__ import annotations

revision = "0012_jobs"
down_revision = "0011_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
