"""access policy versions edited in the portal (rights per role)

Revision ID: 0016_access_policy
Revises: 0015_crypto
Create Date: 2026-11-22

One row per saved version of the rights matrix (smartmed.access.policy_store): the whole
matrix as JSON, who saved it, when and why; the newest row is in force.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_access_policy"
down_revision = "0015_crypto"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_policy_version",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("rights", sa.Text(), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("author_name", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("restored_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_access_policy_version")),
    )


def downgrade() -> None:
    op.drop_table("access_policy_version")
