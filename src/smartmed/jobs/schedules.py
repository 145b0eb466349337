"""Recurring jobs: each cron occurrence becomes one job, exactly once across processes.

Every runner ticks the schedules; the next occurrence of each is kept in ``job_schedule``
and the job it becomes is keyed ``cron:<name>:<occurrence>``, so two processes ticking
the same second enqueue it once (the key is unique). When every process was down over
several occurrences only the newest missed one runs: a reminder sent eight times after
a weekend outage helps nobody.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from croniter import croniter
from sqlalchemy import select, update

from smartmed.jobs.queue import enqueue, insert_ignore, utcnow
from smartmed.jobs.registry import registry
from smartmed.jobs.tables import job_schedule

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine


def next_after(cron: str, moment: datetime) -> datetime:
    """The first occurrence of ``cron`` strictly after ``moment``."""
    value: datetime = croniter(cron, moment).get_next(datetime)
    return value


def latest_at(cron: str, moment: datetime) -> datetime:
    """The newest occurrence of ``cron`` at or before ``moment``."""
    value: datetime = croniter(cron, moment + timedelta(microseconds=1)).get_prev(datetime)
    return value


async def tick_schedules(engine: FhirEngine, now: datetime | None = None) -> int:
    """Enqueue the due occurrence of every registered schedule; how many were enqueued."""
    if not registry.schedules:
        return 0
    now = now or utcnow()
    enqueued = 0
    async with engine.db.write() as conn:
        rows = {
            r.name: r
            for r in (
                await conn.execute(
                    select(job_schedule)
                    .where(job_schedule.c.name.in_(list(registry.schedules)))
                    .with_for_update()
                )
            ).all()
        }
        for sched in registry.schedules.values():
            row = rows.get(sched.name)
            if row is None:
                await conn.execute(
                    insert_ignore(conn, job_schedule, ["name"]).values(
                        name=sched.name, cron=sched.cron, next_run=next_after(sched.cron, now)
                    )
                )
                continue
            if row.cron != sched.cron:  # the code changed the schedule: start afresh
                await conn.execute(
                    update(job_schedule)
                    .where(job_schedule.c.name == sched.name)
                    .values(cron=sched.cron, next_run=next_after(sched.cron, now))
                )
                continue
            if row.next_run > now:
                continue
            occurrence = max(row.next_run, latest_at(sched.cron, now))
            stamp = occurrence.isoformat()
            if await enqueue(
                conn, sched.name, {"occurrence": stamp}, key=f"cron:{sched.name}:{stamp}"
            ):
                enqueued += 1
            await conn.execute(
                update(job_schedule)
                .where(job_schedule.c.name == sched.name)
                .values(next_run=next_after(sched.cron, now))
            )
    return enqueued
