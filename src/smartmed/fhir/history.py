"""History queries: instance, type and system level, newest first, with stable paging.

Paging is stable while data changes: the first page pins the newest history row it
saw (``_snapshot``); later pages only look at rows up to it, so new writes never shift
the offsets of a client walking the pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.hooks import current_access, note_touched
from smartmed.fhir.model import StoredResource
from smartmed.fhir.storage.tables import resource, resource_history


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One history row: the version and the interaction that made it."""

    stored: StoredResource
    action: str  # create | update | delete


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of history with the total and the snapshot that pins further pages."""

    entries: list[HistoryEntry]
    total: int
    snapshot: int


async def history(
    conn: AsyncConnection,
    *,
    type_: str | None = None,
    id_: str | None = None,
    since: datetime | None = None,
    at_or_before: datetime | None = None,
    count: int,
    offset: int = 0,
    snapshot: int | None = None,
) -> HistoryPage:
    """A page of versions, newest first, filtered by type, id and ``_since``."""
    h = resource_history.c
    conditions = []
    if type_ is not None:
        conditions.append(h.type == type_)
    if id_ is not None:
        conditions.append(h.id == id_)
    if since is not None:
        conditions.append(h.last_updated >= since)
    if at_or_before is not None:
        conditions.append(h.last_updated <= at_or_before)
    guard = current_access.get()
    if guard is not None:
        await guard.ready(conn)
        if type_ is not None and id_ is not None:
            live = await conn.execute(
                select(resource.c.pk).where(
                    resource.c.type == type_, resource.c.id == id_, resource.c.deleted.is_(False)
                )
            )
            if live.first() is not None:
                await guard.check_read(conn, type_, id_)  # 403 rather than an empty history
        allowed = guard.history_condition(h.type, h.id)
        if allowed is not None:
            conditions.append(allowed)
    if snapshot is None:
        snapshot = (await conn.execute(select(func.coalesce(func.max(h.pk), 0)))).scalar_one()
    conditions.append(h.pk <= snapshot)
    total = (
        await conn.execute(select(func.count()).select_from(resource_history).where(*conditions))
    ).scalar_one()
    rows = (
        await conn.execute(
            select(h.type, h.id, h.version_id, h.last_updated, h.action, h.content)
            .where(*conditions)
            .order_by(h.last_updated.desc(), h.pk.desc())
            .limit(count)
            .offset(offset)
        )
    ).all()
    entries = [
        HistoryEntry(
            StoredResource(
                r.type, r.id, r.version_id, r.last_updated, r.action == "delete", r.content
            ),
            r.action,
        )
        for r in rows
    ]
    for r in rows:
        note_touched(r.type, r.id, r.content)
    return HistoryPage(entries, total, snapshot)
