"""The hash chain: link hashes, the chain head, and the chainer that links new rows in order.

``hash(seq) = SHA-256(bytes(prev hash) || {"prev_seq":P,"record":<canonical JSON>,"seq":S})``
with the genesis hash all zeros and ``prev_seq`` 0 before the first record. The record's
own seq and its predecessor's seq are inside the hashed text, so moving a record to
another position, or removing one, breaks the chain at a place that names the seq.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.audit.tables import audit_anchor, audit_log
from smartmed.fhir.storage.database import Database

GENESIS = "0" * 64
# Arbitrary constants: PostgreSQL advisory locks of the audit writers and of the chainer.
INSERT_LOCK = 7_140_001_101
CHAIN_LOCK = 7_140_001_102


def link_hash(prev_hash: str, seq: int, prev_seq: int, body: str) -> str:
    """The chain hash of the record ``body`` at ``seq`` following ``prev_seq``/``prev_hash``."""
    material = f'{{"prev_seq":{prev_seq},"record":{body},"seq":{seq}}}'.encode()
    return hashlib.sha256(bytes.fromhex(prev_hash) + material).hexdigest()


async def pg_lock(conn: AsyncConnection, key: int) -> None:
    """Take a transaction-scoped PostgreSQL advisory lock (SQLite writers are serial anyway)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


async def anchor(conn: AsyncConnection) -> tuple[int, str]:
    """(seq, hash) of the newest retention anchor, or the genesis (0, zeros)."""
    row = (
        await conn.execute(
            select(audit_anchor.c.seq, audit_anchor.c.hash)
            .order_by(audit_anchor.c.seq.desc())
            .limit(1)
        )
    ).first()
    return (int(row.seq), str(row.hash)) if row is not None else (0, GENESIS)


async def head(conn: AsyncConnection) -> tuple[int, str]:
    """(seq, hash) of the newest chained record, else of the newest anchor, else genesis."""
    row = (
        await conn.execute(
            select(audit_log.c.seq, audit_log.c.hash)
            .where(audit_log.c.hash.is_not(None))
            .order_by(audit_log.c.seq.desc())
            .limit(1)
        )
    ).first()
    if row is not None:
        return int(row.seq), str(row.hash)
    return await anchor(conn)


async def pending_count(conn: AsyncConnection) -> int:
    """How many records wait for the chainer."""
    return int(
        await conn.scalar(
            select(func.count()).select_from(audit_log).where(audit_log.c.hash.is_(None))
        )
        or 0
    )


_LINK = (
    update(audit_log)
    .where(audit_log.c.seq == bindparam("b_seq"))
    .values(prev_seq=bindparam("b_prev"), hash=bindparam("b_hash"))
)


async def chain_pending(db: Database, *, batch: int = 1000) -> int:
    """Link every record not chained yet, in seq order; how many were linked."""
    total = 0
    while True:
        async with db.write() as conn:
            await pg_lock(conn, CHAIN_LOCK)
            prev_seq, prev_hash = await head(conn)
            rows = (
                await conn.execute(
                    select(audit_log.c.seq, audit_log.c.body)
                    .where(audit_log.c.hash.is_(None), audit_log.c.seq > prev_seq)
                    .order_by(audit_log.c.seq)
                    .limit(batch)
                )
            ).all()
            if not rows:
                return total
            params: list[dict[str, Any]] = []
            for row in rows:
                digest = link_hash(prev_hash, row.seq, prev_seq, row.body)
                params.append({"b_seq": row.seq, "b_prev": prev_seq, "b_hash": digest})
                prev_seq, prev_hash = int(row.seq), digest
            await conn.execute(_LINK, params)
        total += len(rows)
        if len(rows) < batch:
            return total
