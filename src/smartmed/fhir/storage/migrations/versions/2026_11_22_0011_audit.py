"""audit: AuditEvent append log, hash chain and checkpoints

Revision ID: 0011_audit
Revises: 0002_search_kinds
Create Date: 2026-11-22
"""

from __future__ import annotations

revision = "0011_audit"
down_revision = "0002_search_kinds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
