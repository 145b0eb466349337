"""crypto: data keys for envelope encryption of sensitive identifiers

Revision ID: 0015_crypto
Revises: 0014_access
Create Date: 2026-11-22
"""

from __future__ import annotations

revision = "0015_crypto"
down_revision = "0014_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
