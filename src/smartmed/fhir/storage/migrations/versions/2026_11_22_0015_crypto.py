"""crypto: data keys for envelope encryption of sensitive identifiers

Revision ID: 0015_crypto
Revises: 0014_access
Create Date: 2026-11-22

The key table only; the first keys are made by the application on its first use of the
database (they need the key-encryption key from the configuration, which a migration
does not see). Existing plaintext values are sealed by ``smartmed keys reseal``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_crypto"
down_revision = "0014_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crypto_key",
        sa.Column("kid", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(8), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_crypto_key")),
    )


def downgrade() -> None:
    op.drop_table("crypto_key")
