"""Tamper-evident audit: every access and change as a hash-chained FHIR AuditEvent.

=====================  =============================================================
``writer.AuditLog``    the engine's audit sink: group-committed, durable appends
``chain``              link hashes and the chainer (background, about once a second)
``materialise``        chained records -> AuditEvent resources (``audit-<seq>``)
``verify``             recompute the chain; altered / removed / reordered records
``checkpoint``         signed chain heads (compact JWS) kept outside the database
``retention``          prune records past retention, leaving a verifiable anchor
``auth``               login / failed login / logout records for the identity router
``cli``                ``smartmed audit verify | chain | checkpoint | prune``
=====================  =============================================================

See docs/audit.md.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from smartmed.audit.chain import chain_pending
from smartmed.audit.materialise import materialise
from smartmed.audit.record import BadRecord
from smartmed.audit.writer import AuditLog, AuditUnavailable
from smartmed.fhir.context import FhirEngine

log = structlog.get_logger("smartmed.audit")

__all__ = [
    "AuditLog",
    "AuditUnavailable",
    "BadRecord",
    "catch_up",
    "install",
    "maintain",
    "shutdown",
]


# Materialising costs about as much as the audited read itself (validation and a dozen
# search parameters per AuditEvent). While requests are being audited the background task
# spends at most this share of its time on it, in small batches (each holds SQLite's write
# lock); the AuditEvent view lags under load and catches up when the process is quiet.
BUSY_SHARE = 0.2
BUSY_BATCH = 10
# PostgreSQL has no database-wide write lock: bigger batches cost less per event.
BUSY_BATCH_POSTGRES = 100


async def catch_up(engine: FhirEngine, *, budget: float | None = None) -> tuple[int, int]:
    """Chain pending records, then materialise them: (chained, materialised).

    ``budget`` (seconds) bounds the materialisation; chaining is always complete (cheap).
    """
    chained = await chain_pending(engine.db)
    busy = BUSY_BATCH_POSTGRES if engine.db.is_postgres else BUSY_BATCH
    stored = await materialise(
        engine,
        site=engine.settings.audit_site,
        batch=busy if budget is not None else 200,
        budget=budget,
    )
    return chained, stored


async def maintain(engine: FhirEngine, stopped: asyncio.Event) -> None:
    """Chain and materialise about once per interval until ``stopped`` (worker processes).

    With ``SMARTMED_JOBS_IN_APP=false`` the app processes only append records (cheap,
    durable) and the ``smartmed worker`` processes, which run the background jobs, also do
    this; several workers take turns (advisory locks), none does work twice.
    """
    interval = engine.settings.audit_chain_interval_seconds
    while not stopped.is_set():
        try:
            await catch_up(engine, budget=interval * 0.9)
        except Exception as exc:  # noqa: BLE001 - keep going after a bad turn
            log.exception("audit maintenance failed", error_type=type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), interval)


def install(engine: FhirEngine) -> AuditLog:
    """Make an :class:`AuditLog` the engine's sink and start chaining in the background."""
    settings = engine.settings
    interval = settings.audit_chain_interval_seconds
    audit = AuditLog(engine.db, window=settings.audit_batch_window_ms / 1000)
    engine.audit = audit
    if not settings.jobs_in_app:
        return audit  # the workers chain and materialise (:func:`maintain`)
    seen = audit.written

    async def step() -> None:
        nonlocal seen
        busy = audit.written != seen
        seen = audit.written
        await catch_up(engine, budget=interval * (BUSY_SHARE if busy else 0.9))

    audit.start_maintenance(step, interval=interval)
    return audit


# At shutdown every stored record is chained, but AuditEvents are materialised only for
# this long: the rest waits for the next start or a worker (the log is the evidence, the
# AuditEvents a searchable copy), so a process stops promptly however busy it was.
SHUTDOWN_MATERIALISE_SECONDS = 2.0


async def shutdown(engine: FhirEngine, audit: AuditLog, *, timeout: float = 10.0) -> None:
    """Store what is queued, stop the background task, chain one last time (and
    materialise for at most ``SHUTDOWN_MATERIALISE_SECONDS``)."""
    await audit.close()
    if engine.audit is audit:
        engine.audit = None
    try:
        await asyncio.wait_for(catch_up(engine, budget=SHUTDOWN_MATERIALISE_SECONDS), timeout)
    except Exception as exc:  # noqa: BLE001 - records are stored; the next start chains them
        log.warning("audit catch-up at shutdown failed", error_type=type(exc).__name__)
