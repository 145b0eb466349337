"""Outbox -> workflow handlers: after commit, each change becomes one job per handler.

The dispatcher takes unprocessed outbox rows in key order (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several dispatchers share the work), and in ONE transaction enqueues a
job ``workflow:<handler>`` keyed ``evt:<handler>:<outbox pk>`` for every matching handler
and stamps the rows ``processed_at``. A crash before that commit leaves the rows to the
next pass; the keys make a second pass harmless. Rows are stamped one by one rather than
by a high-water mark because PostgreSQL sequence values commit out of order: a row with
a smaller key may become visible after a larger one was processed.

A handler's job loads the event's version from the history (the resource may have
changed since) and calls the handler; success marks the job done, so the handler never
sees that event again; a failure retries with back-off; a crash re-runs it after the
lease expires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.storage.tables import outbox, resource_history
from smartmed.jobs.queue import enqueue, utcnow
from smartmed.jobs.registry import Event, JobContext, registry

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine


async def dispatch_batch(engine: FhirEngine, *, limit: int = 200) -> int:
    """Turn up to ``limit`` unprocessed outbox rows into handler jobs; how many rows."""
    async with engine.db.read() as conn:  # idle passes never take the (SQLite) write lock
        pending = (
            await conn.execute(select(outbox.c.pk).where(outbox.c.processed_at.is_(None)).limit(1))
        ).first()
    if pending is None:
        return 0
    async with engine.db.write() as conn:
        rows = (
            await conn.execute(
                select(outbox)
                .where(outbox.c.processed_at.is_(None))
                .order_by(outbox.c.pk)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not rows:
            return 0
        for row in rows:
            for handler in registry.handlers_for(row.resource_type, row.action):
                await enqueue(
                    conn,
                    f"workflow:{handler.name}",
                    {
                        "outbox": row.pk,
                        "type": row.resource_type,
                        "id": row.resource_id,
                        "version": row.version_id,
                        "action": row.action,
                        "at": row.created_at.isoformat(),
                    },
                    key=f"evt:{handler.name}:{row.pk}",
                )
        await conn.execute(
            update(outbox)
            .where(outbox.c.pk.in_([r.pk for r in rows]))
            .values(processed_at=utcnow())
        )
        return len(rows)


async def load_version(
    conn: AsyncConnection, type_: str, id_: str, version: int
) -> dict[str, Any] | None:
    """One stored version's content (None for a deletion or an unknown version)."""
    content = (
        await conn.execute(
            select(resource_history.c.content).where(
                resource_history.c.type == type_,
                resource_history.c.id == id_,
                resource_history.c.version_id == version,
            )
        )
    ).scalar_one_or_none()
    if content is None:
        return None
    parsed: dict[str, Any] = orjson.loads(content)
    return parsed


async def run_handler(ctx: JobContext, handler_name: str, payload: dict[str, Any]) -> None:
    """The body of a ``workflow:<handler>`` job."""
    from datetime import datetime

    handler = registry.handlers.get(handler_name)
    if handler is None:
        raise LookupError(f"workflow handler {handler_name!r} is not registered here")
    resource: dict[str, Any] | None = None
    if payload["action"] != "delete":
        async with ctx.engine.db.read() as conn:
            resource = await load_version(conn, payload["type"], payload["id"], payload["version"])
    event = Event(
        outbox_pk=int(payload["outbox"]),
        resource_type=payload["type"],
        resource_id=payload["id"],
        version_id=int(payload["version"]),
        action=payload["action"],
        created_at=datetime.fromisoformat(payload["at"]),
        resource=resource,
    )
    await handler.function(ctx, event)
