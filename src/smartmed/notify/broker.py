"""Wake-ups for open inbox streams, within this process and (PostgreSQL) across processes.

Writing an inbox row wakes the owner's streams in this process at once. On PostgreSQL
the writing transaction also sends ``NOTIFY smartmed_notify, '<owner>'`` (delivered at
commit), and every process with open streams LISTENs on one connection, so a message
written by a job in another worker process arrives at once too. The database stays the
only truth: a stream reads its messages from the inbox table, a wake-up only says when
to look, and each stream also looks every ``SMARTMED_NOTIFY_STREAM_POLL_SECONDS`` in
case a wake-up was lost (LISTEN connection down, SQLite with several processes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from smartmed.fhir.storage.database import Database

log = structlog.get_logger("smartmed.notify")
CHANNEL = "smartmed_notify"


@dataclass(slots=True)
class _Listener:
    connection: Any  # asyncpg connection, or None when LISTEN could not be set up
    users: int


class Broker:
    """Person reference -> the events of the streams that person has open."""

    def __init__(self) -> None:
        self._streams: dict[str, set[asyncio.Event]] = {}
        self._listeners: dict[str, _Listener] = {}  # database URL -> its LISTEN connection
        self._lock = asyncio.Lock()

    @contextmanager
    def subscribe(self, owner: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``owner`` gets a new inbox message, while open."""
        event = asyncio.Event()
        self._streams.setdefault(owner, set()).add(event)
        try:
            yield event
        finally:
            streams = self._streams.get(owner)
            if streams is not None:
                streams.discard(event)
                if not streams:
                    del self._streams[owner]

    def publish(self, owner: str) -> int:
        """Wake ``owner``'s streams in this process; how many there were."""
        streams = self._streams.get(owner, set())
        for event in streams:
            event.set()
        return len(streams)

    def open_streams(self, owner: str) -> int:
        return len(self._streams.get(owner, ()))

    # -- across processes (PostgreSQL) ---------------------------------------------------

    @staticmethod
    async def announce(conn: AsyncConnection, owner: str) -> None:
        """In the writing transaction: wake ``owner``'s streams in every process at commit."""
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT pg_notify(:channel, :owner)"),
                {
                    "channel": CHANNEL,
                    "owner": owner,
                },
            )

    async def listen(self, db: Database) -> None:
        """Hold a LISTEN connection for ``db`` while at least one stream needs it."""
        if not db.is_postgres:
            return
        key = db.url.render_as_string(hide_password=False)
        async with self._lock:
            found = self._listeners.get(key)
            if found is not None:
                found.users += 1
                return
            connection = None
            try:
                import asyncpg

                url = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
                connection = await asyncpg.connect(url)
                await connection.add_listener(CHANNEL, self._relay)
            except Exception as exc:  # noqa: BLE001 - streams still poll
                log.warning("inbox LISTEN unavailable; streams poll", error=type(exc).__name__)
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
                connection = None
            self._listeners[key] = _Listener(connection, 1)

    async def unlisten(self, db: Database) -> None:
        """The stream that called :meth:`listen` has ended."""
        if not db.is_postgres:
            return
        key = db.url.render_as_string(hide_password=False)
        async with self._lock:
            found = self._listeners.get(key)
            if found is None:
                return
            found.users -= 1
            if found.users > 0:
                return
            del self._listeners[key]
            if found.connection is not None:
                with contextlib.suppress(Exception):
                    await found.connection.close()

    def _relay(self, _conn: Any, _pid: int, _channel: str, owner: str) -> None:
        self.publish(owner)


broker = Broker()
