"""A person's in-app inbox: list, read marks, and what the live stream reads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.model import fhir_instant, utcnow
from smartmed.notify.tables import notify_inbox


def _instant(value: Any) -> str | None:
    return fhir_instant(value) if value is not None else None


def inbox_item(row: Any) -> dict[str, Any]:
    """An inbox row as the API and the stream show it."""
    return {
        "id": row.notification_id,
        "seq": row.pk,
        "recipient": row.recipient,
        "template": row.template,
        "urgency": row.urgency,
        "subject": row.subject,
        "body": row.body,
        "created": _instant(row.created_at),
        "read": _instant(row.read_at),
    }


async def list_inbox(
    conn: AsyncConnection,
    owner: str,
    *,
    unread_only: bool = False,
    before: int | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """``owner``'s inbox, newest first, and how many messages are unread."""
    t = notify_inbox.c
    stmt = select(notify_inbox).where(t.owner == owner).order_by(t.pk.desc()).limit(limit)
    if unread_only:
        stmt = stmt.where(t.read_at.is_(None))
    if before is not None:
        stmt = stmt.where(t.pk < before)
    rows = (await conn.execute(stmt)).all()
    unread = await conn.scalar(
        select(func.count()).select_from(notify_inbox).where(t.owner == owner, t.read_at.is_(None))
    )
    return {"items": [inbox_item(r) for r in rows], "unread": int(unread or 0)}


async def inbox_after(conn: AsyncConnection, owner: str, after: int, limit: int = 100) -> list[Any]:
    """``owner``'s inbox rows after sequence number ``after``, oldest first."""
    t = notify_inbox.c
    stmt = select(notify_inbox).where(t.owner == owner, t.pk > after).order_by(t.pk).limit(limit)
    return list((await conn.execute(stmt)).all())


async def last_seq(conn: AsyncConnection, owner: str) -> int:
    """The newest inbox sequence number of ``owner`` (0 when empty)."""
    t = notify_inbox.c
    return int(await conn.scalar(select(func.max(t.pk)).where(t.owner == owner)) or 0)


async def do_mark_read(conn: AsyncConnection, owner: str, notification_id: str | None) -> int:
    """Mark one message (or, with None, all) of ``owner`` read; how many changed."""
    t = notify_inbox.c
    stmt = update(notify_inbox).where(t.owner == owner, t.read_at.is_(None))
    if notification_id is not None:
        stmt = stmt.where(t.notification_id == notification_id)
    result = await conn.execute(stmt.values(read_at=utcnow()))
    return int(result.rowcount or 0)


async def is_in_inbox(conn: AsyncConnection, owner: str, notification_id: str) -> bool:
    t = notify_inbox.c
    found = await conn.scalar(
        select(t.pk).where(t.owner == owner, t.notification_id == notification_id)
    )
    return found is not None
