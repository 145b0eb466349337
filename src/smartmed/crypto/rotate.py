"""Re-sealing stored values: key rotation, and sealing data written before protection.

``reseal`` walks ``resource``, ``resource_history`` and the saved responses of
``idempotency_key`` in key order, one batch per write transaction (rows locked on
PostgreSQL, the write lock held on SQLite, as ``smartmed reindex`` does). A row is
rewritten when it holds a value sealed with another key than the active one, or a value
the policy protects in plaintext (data from before protection was enabled, or a system
added to the configuration since); a current resource rewritten that way also gets its
index rows rebuilt, so the blind index replaces any plaintext there. Rows already sealed
with the active key are left alone, so an interrupted run is simply run again.

``rotate`` first makes a new active data key (the others are retired: they still
decrypt, until the run has re-sealed everything they sealed), then reseals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, Text, delete, insert, select, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB

from smartmed.crypto.policy import MARK
from smartmed.crypto.protector import CryptoProtector
from smartmed.fhir import jsonio
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.search.rows import index_rows
from smartmed.fhir.storage.tables import INDEX_TABLES, idempotency_key, resource, resource_history

# The stored text as it is, without the reveal of the column type.
_RAW_JSON = Text().with_variant(JSONB(), "postgresql")

Progress = Callable[[str, int], None]
"""Called after each batch with (table name, rows looked at in it)."""


@dataclass(slots=True)
class ResealResult:
    """What a run did, per table: rows rewritten."""

    rewritten: dict[str, int] = field(default_factory=dict)
    reindexed: int = 0
    key: str | None = None

    def summary(self) -> str:
        parts = ", ".join(f"{table} {count:,}" for table, count in self.rewritten.items())
        head = f"new data key {self.key}; " if self.key else ""
        return f"{head}re-sealed rows: {parts}; index rebuilt for {self.reindexed:,} resources"


def _protector(engine: FhirEngine) -> CryptoProtector:
    protector = engine.services.protector
    if not isinstance(protector, CryptoProtector):
        raise RuntimeError("this engine has no encryption protector installed")
    return protector


async def rotate(
    engine: FhirEngine, *, batch_size: int = 500, progress: Progress | None = None
) -> ResealResult:
    """A new active data key, then every stored value re-sealed with it."""
    protector = _protector(engine)
    async with engine.db.read():
        pass  # loads the keys (and makes the first ones) if this process has not yet
    key = await protector.add_data_key(engine.db)
    result = await reseal(engine, batch_size=batch_size, progress=progress)
    result.key = key.kid
    return result


async def reseal(
    engine: FhirEngine, *, batch_size: int = 500, progress: Progress | None = None
) -> ResealResult:
    """Re-seal every stored row that needs it (see the module docstring)."""
    protector = _protector(engine)
    if not protector.enabled:
        raise RuntimeError("encryption is disabled (SMARTMED_ENCRYPTION_ENABLED=false)")
    result = ResealResult()
    for table in (resource, resource_history):
        result.rewritten[table.name] = await _reseal_json(
            engine, protector, table, batch_size, result, progress
        )
    result.rewritten[idempotency_key.name] = await _reseal_responses(engine, protector)
    return result


def _needs(protector: CryptoProtector, raw: str) -> str | None:
    """The new stored text of a row, or None when it is fine as it is."""
    sealed_before = MARK in raw
    stale = sealed_before and protector.stale_kids(raw)
    plain = protector.reveal(raw) if sealed_before else raw
    document = jsonio.loads(plain)
    sealed = protector.seal(document, plain) if isinstance(document, dict) else None
    if sealed is None:
        # Nothing the policy protects now. Values sealed under an older policy stay
        # sealed: a narrowed (or mistyped) configuration never writes plaintext back.
        return None
    if stale or raw.count(MARK) != sealed.stored.count(MARK):
        return sealed.stored
    return None


async def _reseal_json(
    engine: FhirEngine,
    protector: CryptoProtector,
    table: Table,
    batch_size: int,
    result: ResealResult,
    progress: Progress | None,
) -> int:
    db = engine.db
    raw = type_coerce(table.c.content, _RAW_JSON).label("raw")
    current = table is resource
    columns = [table.c.pk, raw] + ([table.c.type] if current else [])
    last, rewritten = 0, 0
    while True:
        async with db.write() as conn:
            stmt = (
                select(*columns)
                .where(table.c.pk > last, table.c.content.is_not(None))
                .order_by(table.c.pk)
                .limit(batch_size)
            )
            if db.is_postgres:
                stmt = stmt.with_for_update()
            batch = (await conn.execute(stmt)).all()
            if not batch:
                return rewritten
            changed: list[tuple[int, str, str | None]] = []
            for row in batch:
                new = _needs(protector, row.raw)
                if new is not None:
                    changed.append((row.pk, new, row.type if current else None))
            for pk, new, _ in changed:
                await conn.execute(update(table).where(table.c.pk == pk).values(content=new))
            if current and changed:
                await _reindex(engine, conn, protector, changed)
                result.reindexed += len(changed)
            rewritten += len(changed)
            last = batch[-1].pk
        if progress is not None:
            progress(table.name, len(batch))


async def _reindex(
    engine: FhirEngine,
    conn: Any,
    protector: CryptoProtector,
    changed: list[tuple[int, str, str | None]],
) -> None:
    pks = [pk for pk, _, _ in changed]
    for index_table in INDEX_TABLES.values():
        await conn.execute(delete(index_table).where(index_table.c.res_pk.in_(pks)))
    by_table: dict[str, list[dict[str, Any]]] = {kind: [] for kind in INDEX_TABLES}
    extractor = engine.services.extractor
    for pk, stored, type_ in changed:
        plain = protector.reveal(stored)
        document = jsonio.loads(plain)
        sealed = protector.seal(document, plain)
        index = extractor.extract(sealed.indexed if sealed is not None else document)
        for kind, rows in index_rows(pk, type_ or "", index).items():
            by_table[kind].extend(rows)
    for kind, rows in by_table.items():
        if rows:
            await conn.execute(insert(INDEX_TABLES[kind]), rows)


async def _reseal_responses(engine: FhirEngine, protector: CryptoProtector) -> int:
    """Saved response bodies: sealed whole, with the active key."""
    c = idempotency_key.c
    raw = type_coerce(c.body, Text()).label("raw")
    rewritten = 0
    async with engine.db.write() as conn:
        rows = (await conn.execute(select(c.scope, c.key, raw).where(c.body.is_not(None)))).all()
        for row in rows:
            text: str = row.raw
            if text.startswith(MARK) and not protector.stale_kids(text):
                continue
            plain = protector.reveal_text(text)
            await conn.execute(
                update(idempotency_key)
                .where(c.scope == row.scope, c.key == row.key)
                .values(body=plain)  # the column seals it on the way in
            )
            rewritten += 1
    return rewritten
