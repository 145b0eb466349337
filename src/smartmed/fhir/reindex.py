"""Rebuild the search index rows of every stored resource (``smartmed reindex``).

Needed after the search definitions or the extraction change, and after a migration
that adds index data (0002_search_kinds): rows written before it lack the new values.
Resources are processed in key order, one batch per write transaction: the batch is read
inside that transaction (rows locked on PostgreSQL, the write lock held on SQLite), its
index rows deleted and rebuilt from the stored JSON, so a concurrent update is never
overwritten by stale rows and an interrupted run leaves every finished batch complete.
Running it again gives the same rows (idempotent); ``start_after`` resumes after a key.
With a protector on the database, the stored JSON is read revealed and the rows are made
from the protector's index form, as a write makes them (blind-index values, no plaintext).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select

from smartmed.config import Settings
from smartmed.fhir import jsonio
from smartmed.fhir.search.extract import IndexExtractor
from smartmed.fhir.search.rows import index_rows
from smartmed.fhir.storage.database import Database
from smartmed.fhir.storage.tables import INDEX_TABLES, resource

Progress = Callable[[int, int], None]
"""Called after each batch with (resources done in it, last resource key done)."""


@dataclass(slots=True)
class ReindexResult:
    """What a run did."""

    resources: int = 0
    rows: int = 0
    last_pk: int = 0


async def reindex(
    db: Database,
    extractor: IndexExtractor,
    *,
    batch_size: int = 500,
    start_after: int = 0,
    progress: Progress | None = None,
    result: ReindexResult | None = None,
) -> ReindexResult:
    """Rebuild the index rows of every resource with a key above ``start_after``."""
    result = result or ReindexResult(last_pk=start_after)
    while True:
        async with db.write() as conn:
            stmt = (
                select(resource.c.pk, resource.c.type, resource.c.deleted, resource.c.content)
                .where(resource.c.pk > result.last_pk)
                .order_by(resource.c.pk)
                .limit(batch_size)
            )
            if db.is_postgres:
                stmt = stmt.with_for_update()
            batch = (await conn.execute(stmt)).all()
            if not batch:
                return result
            pks = [row.pk for row in batch]
            for table in INDEX_TABLES.values():
                await conn.execute(delete(table).where(table.c.res_pk.in_(pks)))
            by_table: dict[str, list[dict[str, Any]]] = {kind: [] for kind in INDEX_TABLES}
            for row in batch:
                if row.deleted or row.content is None:
                    continue  # a deleted resource has no index rows
                document = jsonio.loads(row.content)
                sealed = db.protector.seal(document, row.content) if db.protector else None
                index = extractor.extract(sealed.indexed if sealed is not None else document)
                for kind, rows in index_rows(row.pk, row.type, index).items():
                    by_table[kind].extend(rows)
            for kind, rows in by_table.items():
                if rows:
                    await conn.execute(insert(INDEX_TABLES[kind]), rows)
                    result.rows += len(rows)
        result.resources += len(batch)
        result.last_pk = pks[-1]
        if progress is not None:
            progress(len(batch), result.last_pk)


async def count_resources(db: Database, start_after: int = 0) -> int:
    """How many resources (deleted ones included) have a key above ``start_after``."""
    async with db.read() as conn:
        stmt = select(func.count()).select_from(resource).where(resource.c.pk > start_after)
        return int((await conn.execute(stmt)).scalar_one())


def run_cli(settings: Settings, *, batch_size: int, start_after: int) -> str:
    """``smartmed reindex``: migrate if needed, reindex with a progress bar, summarise."""
    import typer

    from smartmed.fhir.context import FhirEngine
    from smartmed.fhir.storage.migrate import is_current, migrate

    result = ReindexResult(last_pk=start_after)

    async def main() -> None:
        engine = FhirEngine.build(settings)  # the protector too: index rows as writes make them
        db, extractor = engine.db, engine.services.extractor
        try:
            if not await is_current(db):
                await migrate(db)
            total = await count_resources(db, start_after)
            with typer.progressbar(length=total, label="reindexing") as bar:
                await reindex(
                    db,
                    extractor,
                    batch_size=batch_size,
                    start_after=start_after,
                    progress=lambda done, _pk: bar.update(done),
                    result=result,
                )
        finally:
            await db.dispose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        typer.echo(f"interrupted: resume with --start-after {result.last_pk}", err=True)
        raise typer.Exit(130) from None
    return f"reindexed {result.resources} resources ({result.rows} index rows)"
