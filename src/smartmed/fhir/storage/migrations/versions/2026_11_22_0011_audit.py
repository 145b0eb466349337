"""audit: AuditEvent append log, hash chain and checkpoints

Revision ID: 0011_audit
Revises: 0002_search_kinds
Create Date: 2026-11-22

Tables ``audit_log``, ``audit_anchor``, ``audit_state`` (smartmed.audit.tables) and the
triggers that make the log append-only at the database level:

- INSERT into ``audit_log`` must leave ``prev_seq``/``hash`` empty (only the chainer sets them);
- UPDATE of ``audit_log`` may only fill ``prev_seq``/``hash`` of a row not chained yet;
- DELETE from ``audit_log`` only of chained rows covered by a retention anchor and older
  than 183 days (the legal minimum); TRUNCATE is refused (PostgreSQL);
- ``audit_anchor`` rows are never changed or deleted, and a new one must name an existing
  chained record (its hash) beyond the previous anchor.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_audit"
down_revision = "0002_search_kinds"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER audit_log_insert_guard BEFORE INSERT ON audit_log
    WHEN NEW.hash IS NOT NULL OR NEW.prev_seq IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'audit_log: records are inserted unchained'); END
    """,
    """
    CREATE TRIGGER audit_log_update_guard BEFORE UPDATE ON audit_log
    WHEN OLD.hash IS NOT NULL OR NEW.seq IS NOT OLD.seq OR NEW.body IS NOT OLD.body
      OR NEW.recorded IS NOT OLD.recorded
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: a record cannot be changed'); END
    """,
    """
    CREATE TRIGGER audit_log_delete_guard BEFORE DELETE ON audit_log
    WHEN OLD.hash IS NULL
      OR OLD.seq > COALESCE((SELECT max(seq) FROM audit_anchor), 0)
      OR OLD.recorded >= datetime('now', '-183 days')
    BEGIN SELECT RAISE(ABORT, 'audit_log: records are removed only by retention pruning'); END
    """,
    """
    CREATE TRIGGER audit_anchor_insert_guard BEFORE INSERT ON audit_anchor
    WHEN NEW.hash IS NOT (SELECT hash FROM audit_log WHERE seq = NEW.seq)
      OR NEW.seq <= COALESCE((SELECT max(seq) FROM audit_anchor), 0)
    BEGIN SELECT RAISE(ABORT, 'audit_anchor: must name a chained record after the last anchor');
    END
    """,
    """
    CREATE TRIGGER audit_anchor_update_guard BEFORE UPDATE ON audit_anchor
    BEGIN SELECT RAISE(ABORT, 'audit_anchor is append-only'); END
    """,
    """
    CREATE TRIGGER audit_anchor_delete_guard BEFORE DELETE ON audit_anchor
    BEGIN SELECT RAISE(ABORT, 'audit_anchor is append-only'); END
    """,
]

_PG_TRIGGERS = [
    """
    CREATE FUNCTION audit_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        IF NEW.hash IS NOT NULL OR NEW.prev_seq IS NOT NULL THEN
          RAISE EXCEPTION 'audit_log: records are inserted unchained';
        END IF;
        RETURN NEW;
      ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.hash IS NOT NULL OR NEW.seq <> OLD.seq OR NEW.body IS DISTINCT FROM OLD.body
           OR NEW.recorded IS DISTINCT FROM OLD.recorded THEN
          RAISE EXCEPTION 'audit_log is append-only: a record cannot be changed';
        END IF;
        RETURN NEW;
      ELSIF TG_OP = 'DELETE' THEN
        IF OLD.hash IS NULL
           OR OLD.seq > COALESCE((SELECT max(seq) FROM audit_anchor), 0)
           OR OLD.recorded >= (now() AT TIME ZONE 'UTC') - interval '183 days' THEN
          RAISE EXCEPTION 'audit_log: records are removed only by retention pruning';
        END IF;
        RETURN OLD;
      END IF;
      RAISE EXCEPTION 'audit_log: % is refused', TG_OP;
    END $$
    """,
    """
    CREATE TRIGGER audit_log_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_guard()
    """,
    """
    CREATE TRIGGER audit_log_truncate_guard BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_guard()
    """,
    """
    CREATE FUNCTION audit_anchor_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        IF NEW.hash IS DISTINCT FROM (SELECT hash FROM audit_log WHERE seq = NEW.seq)
           OR NEW.seq <= COALESCE((SELECT max(seq) FROM audit_anchor), 0) THEN
          RAISE EXCEPTION 'audit_anchor: must name a chained record after the last anchor';
        END IF;
        RETURN NEW;
      END IF;
      RAISE EXCEPTION 'audit_anchor is append-only';
    END $$
    """,
    """
    CREATE TRIGGER audit_anchor_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_anchor
    FOR EACH ROW EXECUTE FUNCTION audit_anchor_guard()
    """,
    """
    CREATE TRIGGER audit_anchor_truncate_guard BEFORE TRUNCATE ON audit_anchor
    FOR EACH STATEMENT EXECUTE FUNCTION audit_anchor_guard()
    """,
]


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", _SEQ, nullable=False, autoincrement=True),
        sa.Column("recorded", sa.DateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_seq", sa.BigInteger(), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_audit_log_unchained",
        "audit_log",
        ["seq"],
        unique=False,
        sqlite_where=sa.text("hash IS NULL"),
        postgresql_where=sa.text("hash IS NULL"),
    )
    op.create_index("ix_audit_log_recorded", "audit_log", ["recorded"], unique=False)
    op.create_table(
        "audit_anchor",
        sa.Column("seq", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("pruned_at", sa.DateTime(), nullable=False),
        sa.Column("cutoff", sa.DateTime(), nullable=False),
        sa.Column("pruned", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_anchor")),
    )
    op.create_table(
        "audit_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_state")),
    )
    dialect = op.get_bind().dialect.name
    for statement in _PG_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_log_guard() CASCADE")
        op.execute("DROP FUNCTION IF EXISTS audit_anchor_guard() CASCADE")
    op.drop_table("audit_state")
    op.drop_table("audit_anchor")
    op.drop_index("ix_audit_log_recorded", table_name="audit_log")
    op.drop_index("ix_audit_log_unchained", table_name="audit_log")
    op.drop_table("audit_log")
