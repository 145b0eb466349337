"""The audit sink: group commit of concurrent records, and the background chainer.

Every :meth:`AuditLog.record` call puts its row on a queue and waits. One writer task
takes everything queued, writes it with one multi-row INSERT in its own short transaction
(never the caller's) and then resolves all the waiting calls together: a record is
durable before ``record()`` returns, and N concurrent requests pay for one commit.
Batches form by themselves under load: while one INSERT commits, the next callers queue.
``window`` adds an optional wait before each batch for callers that arrive a little later
(off by default: at low load it only adds latency to every request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from sqlalchemy import event, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from smartmed.audit.chain import INSERT_LOCK, chain_pending
from smartmed.audit.record import canonical, utc_naive
from smartmed.audit.tables import audit_log
from smartmed.fhir.hooks import AuditRecord
from smartmed.fhir.storage.database import Database

log = structlog.get_logger("smartmed.audit")


class AuditUnavailable(RuntimeError):
    """The record could not be stored (database unreachable, log closed): it was not accepted."""


_Pending = tuple[datetime, str, "asyncio.Future[None]"]

# PostgreSQL: the whole batch in ONE statement and one round trip, run in autocommit (the
# statement is its own transaction). The CTE takes the writers' advisory lock before any
# row gets its seq, so the writers of all processes take turns and seq order is commit
# order: the chainer can never pass a row that is still uncommitted.
_PG_INSERT = (
    "WITH turn AS (SELECT pg_advisory_xact_lock($1)) "
    "INSERT INTO audit_log (recorded, body) "
    "SELECT t.recorded, t.body FROM turn, "
    "unnest($2::timestamp[], $3::text[]) "
    "WITH ORDINALITY AS t(recorded, body, n) ORDER BY t.n"
)


def _dsn(db: Database) -> str:
    """The PostgreSQL URL for asyncpg itself (no SQLAlchemy driver suffix)."""
    return db.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _writer_engine(db: Database) -> AsyncEngine | None:
    """SQLite: the writer's own connection, in autocommit (None: use the shared one).

    A batch then never queues for the request pool behind the very requests that wait
    for it, and each batch is a single statement (its own transaction). (PostgreSQL: the
    writer holds one asyncpg connection, see :class:`AuditLog`.)
    """
    options: dict[str, Any] = {
        "pool_size": 1,
        "max_overflow": 1,
        "isolation_level": "AUTOCOMMIT",
        "pool_reset_on_return": None,  # autocommit: nothing to roll back
    }
    if not db.url.database or db.url.database == ":memory:":
        return None
    engine = create_async_engine(db.url, connect_args={"timeout": 30}, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The same durability as the rest of the store (WAL, synchronous=NORMAL).
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


class AuditLog:
    """The platform's :class:`~smartmed.fhir.hooks.AuditSink`: append, durable, group-committed."""

    def __init__(
        self,
        db: Database,
        *,
        window: float = 0.0,
        max_batch: int = 1000,
        retries: int = 3,
    ) -> None:
        self.db = db
        self.window = window
        self.max_batch = max_batch
        self.retries = retries
        self.written = 0  # records stored by this process
        self.batches = 0  # INSERT transactions that stored them
        # PostgreSQL: one asyncpg connection of the writer's own, in autocommit, so a
        # batch is one prepared statement and one round trip, with none of a pool's
        # checkout and reset (a third of a millisecond of CPU per batch, and under a
        # steady load most batches hold one or two records).
        self._pg: asyncpg.Connection | None = None
        self._own = _writer_engine(db) if db.is_sqlite else None
        # Database serialises this process's SQLite writers with an asyncio lock.
        self._sqlite_turn: asyncio.Lock = getattr(db, "_write_lock", None) or asyncio.Lock()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._closed = False

    async def record(self, record: AuditRecord) -> None:
        """Store one record; returns once it is committed (raises if it could not be)."""
        if self._closed:
            raise AuditUnavailable("the audit log is closed")
        body = canonical(record)  # BadRecord for a record that cannot become an AuditEvent
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((utc_naive(record.recorded), body, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._run(), name="smartmed-audit-writer")
        self._wake.set()
        # Shielded: a cancelled request (client gone) must not cancel its record's write.
        await asyncio.shield(done)

    async def flush(self) -> None:
        """Wait until everything queued so far is stored."""
        waiting = [f for _, _, f in self._pending]
        if waiting:
            await asyncio.gather(*(asyncio.shield(f) for f in waiting), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # Let callers already scheduled in this turn of the event loop join the batch.
            await asyncio.sleep(self.window)
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        rows = [{"recorded": recorded, "body": body} for recorded, body, _ in batch]
        for attempt in range(self.retries + 1):
            try:
                if self.db.is_postgres:
                    if self._pg is None or self._pg.is_closed():
                        self._pg = await asyncpg.connect(_dsn(self.db))
                    await self._pg.execute(
                        _PG_INSERT,
                        INSERT_LOCK,
                        [r["recorded"] for r in rows],
                        [r["body"] for r in rows],
                    )
                elif self._own is not None:
                    # SQLite: one multi-row INSERT in autocommit is one atomic transaction
                    # and one hop to the driver's thread. It queues on the engine's writer
                    # lock like every writer of this process (instead of SQLite's busy
                    # handler, which sleeps up to 100 ms between tries).
                    async with self._sqlite_turn, self._own.connect() as conn:
                        await conn.execute(insert(audit_log).values(rows))
                else:  # an in-memory database cannot be opened twice
                    async with self.db.write() as conn:
                        await conn.execute(insert(audit_log), rows)
                break
            except (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self._pg is not None:
                    self._pg.terminate()  # a fresh connection for the next try
                    self._pg = None
                if attempt == self.retries:
                    log.error("audit records not stored", count=len(rows), error=str(exc))
                    failure = AuditUnavailable(f"audit records could not be stored: {exc}")
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(failure)
                    return
                await asyncio.sleep(0.05 * 2**attempt)
        self.written += len(rows)
        self.batches += 1
        for _, _, done in batch:
            if not done.done():
                done.set_result(None)

    # -- background maintenance --------------------------------------------------------

    def start_maintenance(
        self, step: Callable[[], Awaitable[object]] | None = None, *, interval: float = 1.0
    ) -> None:
        """Run ``step`` (default: the chainer) every ``interval`` seconds until closed."""
        work = step or (lambda: chain_pending(self.db))

        async def loop() -> None:
            while not self._closed:
                await asyncio.sleep(interval)
                try:
                    await work()
                except Exception as exc:  # noqa: BLE001 - keep chaining after a bad turn
                    log.exception("audit maintenance failed", error_type=type(exc).__name__)

        self._maintenance = asyncio.get_running_loop().create_task(
            loop(), name="smartmed-audit-maintenance"
        )

    async def close(self) -> None:
        """Refuse new records, store the queued ones, stop the background task."""
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._own is not None:
            await self._own.dispose()
        if self._pg is not None:
            await self._pg.close()
            self._pg = None
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except asyncio.CancelledError:
                pass
