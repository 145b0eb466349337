"""Audit tables, on the resource store's ``metadata`` so Alembic sees one schema.

- ``audit_log``: the append-only log. ``seq`` is assigned at insert (monotonic: AUTOINCREMENT
  on SQLite, an identity sequence on PostgreSQL, inserts serialised so commit order is seq
  order); ``body`` is the record's canonical JSON, stored as text (never JSONB, whose text
  form differs from what was hashed). ``prev_seq`` and ``hash`` are NULL until the chainer
  links the row to its predecessor: ``hash = SHA-256(prev hash || canonical JSON)``.
- ``audit_anchor``: one row per retention prune: the last pruned record's seq and hash,
  from which verification starts once the older records are gone.
- ``audit_state``: bookkeeping that may change (the materialisation high-water mark).

Database triggers (migration 0011) refuse changes to chained rows, inserts of pre-chained
rows, and deletions other than retention pruning (see docs/audit.md).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text, text

from smartmed.fhir.storage.tables import PK, metadata

HASH_LEN = 64  # hex SHA-256

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("recorded", DateTime(timezone=False), nullable=False),
    Column("body", Text, nullable=False),
    Column("prev_seq", BigInteger, nullable=True),
    Column("hash", String(HASH_LEN), nullable=True),
    # The chainer's work list: only the (few) rows not chained yet.
    Index(
        "ix_audit_log_unchained",
        "seq",
        sqlite_where=text("hash IS NULL"),
        postgresql_where=text("hash IS NULL"),
    ),
    Index("ix_audit_log_recorded", "recorded"),
    # Never reuse a seq, even after the newest row was removed.
    sqlite_autoincrement=True,
)

audit_anchor = Table(
    "audit_anchor",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(HASH_LEN), nullable=False),
    Column("pruned_at", DateTime(timezone=False), nullable=False),
    Column("cutoff", DateTime(timezone=False), nullable=False),
    Column("pruned", Integer, nullable=False),
)

audit_state = Table(
    "audit_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
