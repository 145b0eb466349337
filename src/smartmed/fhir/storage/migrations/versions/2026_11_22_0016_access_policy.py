"""access policy versions edited in the portal (rights per role)

Revision ID: 0016_access_policy
Revises: 0015_crypto
Create Date: 2026-11-22

Reserved slot (empty until its module adds tables), so every module's migration keeps
one linear history.
"""

from __future__ import annotations

revision = "0016_access_policy"
down_revision = "0015_crypto"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
