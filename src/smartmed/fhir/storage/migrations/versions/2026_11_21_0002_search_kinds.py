"""search kinds: composite groups, :of-type, :identifier, UCUM canonical quantities, near, _text

Revision ID: 0002_search_kinds
Revises: 0010_identity
Create Date: 2026-11-21

Adds index columns and tables only; it does not touch resources and does not reindex.
Rows indexed before this revision have no composite, of-type, reference-identifier,
canonical-quantity, position or text values: run ``smartmed reindex`` once after
upgrading (it is resumable and idempotent), or those searches miss the older resources.

(Chained after 0010_identity, which already branched from 0001_resource_store, so that
the schema keeps a single head.)
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0002_search_kinds"
down_revision = "0010_identity"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_GROUPED = ("idx_token", "idx_string", "idx_reference", "idx_date", "idx_number", "idx_quantity")


def _new_table(name: str, *columns: sa.Column[object], lookup: list[str]) -> None:
    op.create_table(
        name,
        sa.Column("res_pk", _PK, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        *columns,
    )
    with op.batch_alter_table(name, schema=None) as batch_op:
        batch_op.create_index(f"ix_{name}_lookup", lookup, unique=False)
        batch_op.create_index(f"ix_{name}_res_pk", ["res_pk"], unique=False)


def upgrade() -> None:
    for name in _GROUPED:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(sa.Column("grp", sa.Integer(), nullable=True))
    with op.batch_alter_table("idx_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("type_system", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("type_code", sa.Text(), nullable=True))
    with op.batch_alter_table("idx_reference", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ident_system", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("ident_value", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_idx_reference_identifier",
            ["resource_type", "param", "ident_value"],
            unique=False,
        )
    with op.batch_alter_table("idx_quantity", schema=None) as batch_op:
        batch_op.add_column(sa.Column("canon_value", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("canon_low", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("canon_high", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("canon_unit", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_idx_quantity_canonical",
            ["resource_type", "param", "canon_unit", "canon_value"],
            unique=False,
        )
    _new_table(
        "idx_geo",
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("z", sa.Float(), nullable=False),
        lookup=["resource_type", "param", "lat", "lon"],
    )
    _new_table(
        "idx_text",
        sa.Column("value", sa.Text(), nullable=False),
        lookup=["resource_type", "param"],
    )
    stored = op.get_bind().execute(sa.text("SELECT 1 FROM resource LIMIT 1")).first()
    if stored is not None:
        logging.getLogger("alembic").warning(
            "search index columns added: run `smartmed reindex` to index the stored resources"
        )


def downgrade() -> None:
    for name in ("idx_text", "idx_geo"):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{name}_res_pk")
            batch_op.drop_index(f"ix_{name}_lookup")
        op.drop_table(name)
    with op.batch_alter_table("idx_quantity", schema=None) as batch_op:
        batch_op.drop_index("ix_idx_quantity_canonical")
        for column in ("canon_unit", "canon_high", "canon_low", "canon_value"):
            batch_op.drop_column(column)
    with op.batch_alter_table("idx_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_idx_reference_identifier")
        batch_op.drop_column("ident_value")
        batch_op.drop_column("ident_system")
    with op.batch_alter_table("idx_token", schema=None) as batch_op:
        batch_op.drop_column("type_code")
        batch_op.drop_column("type_system")
    for name in _GROUPED:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("grp")
