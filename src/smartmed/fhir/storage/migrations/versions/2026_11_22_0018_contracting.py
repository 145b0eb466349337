"""family-doctor contracting: applications, invitations, service counters

Revision ID: 0018_contracting
Revises: 0017_payments
Create Date: 2026-11-22

Reserved slot (empty until its module adds tables), so every module's migration keeps
one linear history.
"""

from __future__ import annotations

revision = "0018_contracting"
down_revision = "0017_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
