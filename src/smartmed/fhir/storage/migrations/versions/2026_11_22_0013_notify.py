"""notify: notification deliveries, preferences, in-app inbox

Revision ID: 0013_notify
Revises: 0012_jobs
Create Date: 2026-11-22
"""

from __future__ import annotations

revision = "0013_notify"
down_revision = "0012_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
