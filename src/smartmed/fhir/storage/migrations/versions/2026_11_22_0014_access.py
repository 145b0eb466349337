"""access: grants derived from contracts, consents, referrals, visits; break-the-glass

Revision ID: 0014_access
Revises: 0013_notify
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_access"
down_revision = "0013_notify"
branch_labels = None
depends_on = None

_REF = sa.String(200)


def upgrade() -> None:
    op.create_table(
        "access_grant",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", _REF, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("grantee", _REF, nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=True),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("actions", sa.Text(), nullable=True),
        sa.Column("valid_from", sa.DateTime(), nullable=True),
        sa.Column("valid_to", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(), nullable=True),
        sa.Column("reviewed_by", _REF, nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_access_grant")),
    )
    op.create_index("ix_access_grant_grantee", "access_grant", ["grantee", "kind", "patient_id"])
    op.create_index("ix_access_grant_source", "access_grant", ["source"])
    op.create_index("ix_access_grant_patient", "access_grant", ["patient_id"])


def downgrade() -> None:
    op.drop_table("access_grant")
