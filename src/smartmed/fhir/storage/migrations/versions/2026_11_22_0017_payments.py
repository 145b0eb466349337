"""payments: orders, provider callbacks

Revision ID: 0017_payments
Revises: 0016_access_policy
Create Date: 2026-11-22

Reserved slot (empty until its module adds tables), so every module's migration keeps
one linear history.
"""

from __future__ import annotations

revision = "0017_payments"
down_revision = "0016_access_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
