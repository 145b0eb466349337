"""access: break-the-glass grants and policy data

Revision ID: 0014_access
Revises: 0013_notify
Create Date: 2026-11-22
"""

from __future__ import annotations

revision = "0014_access"
down_revision = "0013_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
