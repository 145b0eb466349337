"""In-app inbox: a row per message, pushed at once to the person's open pages (SSE)."""

from __future__ import annotations

from sqlalchemy import select

from smartmed.fhir.model import utcnow
from smartmed.fhir.storage.database import Database
from smartmed.notify.broker import broker
from smartmed.notify.channels.base import Message
from smartmed.notify.tables import notify_inbox


class InApp:
    """Writes the inbox row (once per notification) and wakes the owner's streams."""

    name = "inapp"

    def __init__(self, db: Database) -> None:
        self.db = db

    def unavailable(self, template: str) -> str | None:
        return None

    async def send(self, message: Message) -> str | None:
        async with self.db.write() as conn:
            pk = await conn.scalar(
                select(notify_inbox.c.pk).where(
                    notify_inbox.c.notification_id == message.notification_id
                )
            )
            if pk is None:
                result = await conn.execute(
                    notify_inbox.insert()
                    .values(
                        notification_id=message.notification_id,
                        owner=message.owner,
                        recipient=message.recipient,
                        template=message.template,
                        urgency=message.urgency,
                        subject=message.subject,
                        body=message.body,
                        created_at=utcnow(),
                        read_at=None,
                    )
                    .returning(notify_inbox.c.pk)
                )
                pk = result.scalar_one()
                await broker.announce(conn, message.owner)  # other processes' streams
        broker.publish(message.owner)  # after commit: the stream reads what we wrote
        return str(pk)
