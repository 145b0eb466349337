"""Workflow handlers from the outbox, and recurring (cron) jobs."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.tables import outbox
from smartmed.jobs import Event, JobContext, on_event, schedule
from smartmed.jobs.queue import claim, utcnow
from smartmed.jobs.registry import registry
from smartmed.jobs.runner import JobRunner
from smartmed.jobs.schedules import tick_schedules
from smartmed.jobs.tables import job
from tests.jobs.conftest import make_due

SEEN: list[tuple[str, str, int, str | None]] = []  # (action, id, version, status)
FAIL_NEXT: list[bool] = []
TICKS: list[str] = []
MARK = "workflow-test"


def _marked(event: Event) -> bool:
    return event.resource is None or event.resource.get("language") == MARK


@on_event("Encounter", actions={"create", "update"}, name="test.encounters", backoff_seconds=5)
async def on_encounter(ctx: JobContext, event: Event) -> None:
    if FAIL_NEXT:
        FAIL_NEXT.pop()
        raise RuntimeError("handler failed")
    status = event.resource["status"] if event.resource else None
    SEEN.append((event.action, event.resource_id, event.version_id, status))


@on_event("Encounter", actions={"delete"}, name="test.encounter-deletions")
async def on_encounter_deleted(ctx: JobContext, event: Event) -> None:
    SEEN.append((event.action, event.resource_id, event.version_id, None))


@schedule("*/5 * * * *", name="test.every5")
async def every_five(ctx: JobContext, payload: dict[str, Any]) -> None:
    TICKS.append(payload["occurrence"])


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()
    FAIL_NEXT.clear()
    TICKS.clear()


def encounter(status: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "language": MARK,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    }


async def test_handler_sees_each_event_once_in_order(engine: FhirEngine, runner: JobRunner) -> None:
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        created = await repo.create(encounter("planned"))
        body = encounter("in-progress") | {"id": created.id}
        await repo.update("Encounter", created.id, body)
    async with engine.db.write() as conn:
        await engine.repository(conn).delete("Encounter", created.id)
    await runner.run_once()
    assert sorted(SEEN, key=lambda s: s[2]) == [
        ("create", created.id, 1, "planned"),  # the version of the event, not the newest
        ("update", created.id, 2, "in-progress"),
        ("delete", created.id, 3, None),
    ]
    assert await runner.run_once() == 0
    async with engine.db.read() as conn:
        pending = (
            await conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.processed_at.is_(None))
            )
        ).scalar_one()
        # This test's handlers (other modules' handlers may watch Encounters too).
        keys = sorted(
            (await conn.execute(select(job.c.key).where(job.c.key.like("evt:test.%")))).scalars()
        )
    assert pending == 0
    assert keys == [
        "evt:test.encounter-deletions:3",
        "evt:test.encounters:1",
        "evt:test.encounters:2",
    ]


async def test_failed_handler_is_retried_and_then_never_again(
    engine: FhirEngine, runner: JobRunner
) -> None:
    async with engine.db.write() as conn:
        created = await engine.repository(conn).create(encounter("planned"))
    FAIL_NEXT.append(True)
    await runner.run_once()
    assert SEEN == []
    async with engine.db.read() as conn:
        (row,) = (await conn.execute(select(job))).all()
    assert (row.state, row.attempts, row.last_error) == (
        "queued",
        1,
        "RuntimeError: handler failed",
    )
    await make_due(engine)
    await runner.run_once()
    await make_due(engine)
    await runner.run_once()
    assert SEEN == [("create", created.id, 1, "planned")]


async def test_handler_interrupted_by_a_crash_runs_again(engine: FhirEngine) -> None:
    async with engine.db.write() as conn:
        created = await engine.repository(conn).create(encounter("planned"))
    crashed = JobRunner(engine, worker_id="crashed")
    await crashed.run_once()  # dispatches and runs: the handler succeeds
    SEEN.clear()
    async with engine.db.write() as conn:  # a second event claimed by a process then killed
        await engine.repository(conn).update(
            "Encounter", created.id, encounter("finished") | {"id": created.id}
        )
    from smartmed.jobs.dispatch import dispatch_batch

    assert await dispatch_batch(engine) == 1
    async with engine.db.write() as conn:
        (held,) = await claim(conn, worker="killed", limit=10, lease_seconds=60)
        await conn.execute(update(job).where(job.c.pk == held.pk).values(locked_until=utcnow()))
    await asyncio.sleep(0.01)
    await JobRunner(engine, worker_id="survivor").run_once()
    assert SEEN == [("update", created.id, 2, "finished")]


async def test_outbox_rows_of_unwatched_types_are_consumed(
    engine: FhirEngine, runner: JobRunner
) -> None:
    async with engine.db.write() as conn:
        await engine.repository(conn).create({"resourceType": "Patient", "active": True})
    await runner.run_once()
    async with engine.db.read() as conn:
        jobs = (await conn.execute(select(func.count()).select_from(job))).scalar_one()
        processed = (await conn.execute(select(outbox.c.processed_at))).scalar_one()
    assert (jobs, processed is not None) == (0, True)


def test_on_event_rejects_unknown_actions() -> None:
    with pytest.raises(ValueError, match="actions must be a non-empty subset"):
        on_event("Encounter", actions={"read"})
    with pytest.raises(ValueError, match="invalid cron expression"):
        schedule("61 * * * *", name="test.bad")


async def test_each_cron_occurrence_runs_once(
    engine: FhirEngine, runner: JobRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this test's schedule: others (payments, contracting) register themselves when
    # their modules are imported by an app built earlier in the session.
    monkeypatch.setattr(registry, "schedules", {"test.every5": registry.schedules["test.every5"]})
    t0 = datetime(2026, 11, 22, 8, 1)
    assert await tick_schedules(engine, t0) == 0  # first sight: next occurrence 08:05
    assert await tick_schedules(engine, t0 + timedelta(minutes=2)) == 0
    at = datetime(2026, 11, 22, 8, 5, 30)
    # Three processes tick at once: one job.
    counts = await asyncio.gather(*(tick_schedules(engine, at) for _ in range(3)))
    assert sorted(counts) == [0, 0, 1]
    assert await tick_schedules(engine, at + timedelta(seconds=20)) == 0
    # Everything down for an hour: the newest missed occurrence runs, once.
    assert await tick_schedules(engine, datetime(2026, 11, 22, 9, 7)) == 1
    assert await tick_schedules(engine, datetime(2026, 11, 22, 9, 8)) == 0
    runner.schedules = False  # the runner's own tick would use the real clock
    await runner.run_once()
    assert sorted(TICKS) == ["2026-11-22T08:05:00", "2026-11-22T09:05:00"]
    async with engine.db.read() as conn:
        keys = sorted((await conn.execute(select(job.c.key))).scalars())
    assert keys == ["cron:test.every5:2026-11-22T08:05:00", "cron:test.every5:2026-11-22T09:05:00"]
