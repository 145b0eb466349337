"""The job runner: claims due jobs under a lease, runs them, heartbeats, retries.

One runner per process (the app's lifespan, or ``smartmed worker``). It also drives the
outbox dispatcher and the schedule tick, both safe to run in several processes at once.
On PostgreSQL idle loops wake on ``LISTEN smartmed_jobs`` / ``smartmed_outbox`` (sent at
commit by :func:`enqueue` and by every resource write) instead of waiting a poll period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import update

from smartmed.jobs.dispatch import dispatch_batch
from smartmed.jobs.queue import Claimed, any_due, claim, fail, finish, heartbeat, utcnow
from smartmed.jobs.registry import JobContext, registry
from smartmed.jobs.schedules import tick_schedules
from smartmed.jobs.tables import job

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine

log = structlog.get_logger("smartmed.jobs")


class JobRunner:
    """Runs jobs of this process's registry, up to ``concurrency`` at a time."""

    def __init__(
        self,
        engine: FhirEngine,
        *,
        concurrency: int = 4,
        poll_seconds: float = 0.5,
        lease_seconds: float = 30.0,
        dispatch: bool = True,
        schedules: bool = True,
        worker_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.dispatch = dispatch
        self.schedules = schedules
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._inflight: dict[int, tuple[Claimed, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._wake_dispatch = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._listener: Any = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background loops."""
        self._stopping = False
        await self._listen()
        self._tasks = [asyncio.create_task(self._claim_loop(), name="jobs-claim")]
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="jobs-heartbeat"))
        if self.dispatch:
            self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="jobs-dispatch"))
        log.info("job runner started", worker=self.worker_id, concurrency=self.concurrency)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop claiming; let running jobs finish for ``grace_seconds``, release the rest."""
        self._stopping = True
        self._wake.set()
        self._wake_dispatch.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        running = [t for _, t in self._inflight.values()]
        if running:
            await asyncio.wait(running, timeout=grace_seconds)
        for claimed, task in list(self._inflight.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await self._release(claimed)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    def wake(self) -> None:
        """Look for due jobs now (e.g. after this process enqueued one)."""
        self._wake.set()

    # -- one step, for tests and the CLI ---------------------------------------------

    async def run_once(self) -> int:
        """Dispatch the outbox, tick schedules, claim and run due jobs to the end; how many."""
        if self.dispatch:
            while await dispatch_batch(self.engine):
                pass
        if self.schedules:
            await tick_schedules(self.engine)
        async with self.engine.db.write() as conn:
            claimed = await claim(
                conn,
                worker=self.worker_id,
                limit=self.concurrency,
                lease_seconds=self.lease_seconds,
            )
        await asyncio.gather(*(self._execute(c) for c in claimed))
        return len(claimed)

    # -- loops -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        last_tick = 0.0
        while not self._stopping:
            try:
                if self.schedules and time.monotonic() - last_tick >= 1.0:
                    last_tick = time.monotonic()
                    await tick_schedules(self.engine)
                free = self.concurrency - len(self._inflight)
                claimed: list[Claimed] = []
                due = False
                if free > 0:
                    async with self.engine.db.read() as conn:
                        due = await any_due(conn)
                if due:
                    async with self.engine.db.write() as conn:
                        claimed = await claim(
                            conn,
                            worker=self.worker_id,
                            limit=free,
                            lease_seconds=self.lease_seconds,
                        )
                for c in claimed:
                    task = asyncio.create_task(self._execute(c), name=f"job-{c.pk}")
                    self._inflight[c.pk] = (c, task)
                    task.add_done_callback(functools.partial(self._done, c.pk))
                if claimed and len(claimed) == free:
                    continue  # there may be more due right now
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the runner
                log.exception("job claim failed")
            await self._sleep(self._wake)

    def _done(self, pk: int, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(pk, None)
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            try:
                if await dispatch_batch(self.engine):
                    self._wake.set()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("outbox dispatch failed")
            await self._sleep(self._wake_dispatch)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease_seconds / 3)
            held = {pk: c.lease for pk, (c, _) in self._inflight.items()}
            if not held:
                continue
            try:
                async with self.engine.db.write() as conn:
                    kept = await heartbeat(conn, held, lease_seconds=self.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("job heartbeat failed")
                continue
            for pk in set(held) - kept:
                # Another worker took the job over after our lease expired: stop our run
                # so that the job does not keep running twice.
                entry = self._inflight.get(pk)
                if entry is not None:
                    log.warning("job lease lost; cancelling", job=pk)
                    entry[1].cancel()

    async def _sleep(self, event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.poll_seconds)
        event.clear()

    # -- running one job -------------------------------------------------------------

    async def _execute(self, claimed: Claimed) -> None:
        kind = registry.kinds.get(claimed.kind)
        error: str | None = None
        if kind is None:
            error = f"unknown job kind {claimed.kind!r} in worker {self.worker_id}"
        elif claimed.attempts > claimed.max_attempts:
            error = "the job's lease expired on its last attempt (worker killed or stuck)"
        else:
            ctx = JobContext(
                self.engine,
                claimed.pk,
                claimed.kind,
                claimed.attempts,
                claimed.max_attempts,
                claimed.key,
            )
            try:
                async with asyncio.timeout(kind.timeout_seconds):
                    await kind.function(ctx, claimed.payload)
            except TimeoutError:
                error = f"timed out after {kind.timeout_seconds:g} s"
            except Exception as exc:  # noqa: BLE001 - any failure is retried
                error = f"{type(exc).__name__}: {exc}"
        try:
            async with self.engine.db.write() as conn:
                if error is None:
                    if not await finish(conn, claimed):
                        log.warning("job finished after its lease was lost", job=claimed.pk)
                    return
                state = await fail(conn, claimed, error)
        except Exception:  # noqa: BLE001 - the lease expires and the job runs again
            log.exception("could not record a job's outcome", job=claimed.pk)
            return
        log.info("job failed", job=claimed.pk, kind=claimed.kind, state=state, error=error)

    async def _release(self, claimed: Claimed) -> None:
        """Give back a job interrupted by a graceful stop; the attempt does not count."""
        with contextlib.suppress(Exception):
            async with self.engine.db.write() as conn:
                await conn.execute(
                    update(job)
                    .where(job.c.pk == claimed.pk, job.c.lease == claimed.lease)
                    .values(
                        state="queued",
                        attempts=job.c.attempts - 1,
                        run_at=utcnow(),
                        locked_by=None,
                        locked_until=None,
                        lease=None,
                    )
                )

    # -- PostgreSQL wake-ups ---------------------------------------------------------

    async def _listen(self) -> None:
        if not self.engine.db.is_postgres:
            return
        import asyncpg

        url = self.engine.db.url.set(drivername="postgresql")
        try:
            conn = await asyncpg.connect(url.render_as_string(hide_password=False))
            await conn.add_listener("smartmed_jobs", lambda *_: self._wake.set())
            await conn.add_listener("smartmed_outbox", lambda *_: self._wake_dispatch.set())
        except (OSError, asyncpg.PostgresError):
            log.warning("LISTEN unavailable; polling only")
            return
        self._listener = conn
