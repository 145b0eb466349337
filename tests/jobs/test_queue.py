"""Durable jobs: enqueue and keys, retries with back-off, dead letters, delays, leases."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from smartmed.fhir.context import FhirEngine
from smartmed.jobs import JobContext, enqueue, job
from smartmed.jobs.queue import Claimed, backoff, claim, finish, list_jobs, retry_dead, utcnow
from smartmed.jobs.registry import registry
from smartmed.jobs.runner import JobRunner
from smartmed.jobs.tables import job as job_table
from tests.jobs.conftest import make_due

RUNS: list[tuple[str, int, int]] = []  # (kind, attempt, payload n)


@job("test.ok", max_attempts=3)
async def ok_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    RUNS.append((ctx.kind, ctx.attempt, payload["n"]))


@job("test.fail", max_attempts=3, backoff_seconds=10)
async def failing_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    RUNS.append((ctx.kind, ctx.attempt, payload["n"]))
    raise RuntimeError(f"boom {ctx.attempt}")


@job("test.flaky", max_attempts=3, backoff_seconds=1)
async def flaky_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    RUNS.append((ctx.kind, ctx.attempt, payload["n"]))
    if ctx.attempt == 1:
        raise ConnectionError("first attempt fails")


@job("test.slow", max_attempts=1, timeout_seconds=0.2)
async def slow_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    await asyncio.sleep(5)


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    RUNS.clear()


async def _rows(engine: FhirEngine) -> list[Any]:
    async with engine.db.read() as conn:
        return list((await conn.execute(select(job_table).order_by(job_table.c.pk))).all())


async def test_same_key_enqueues_once(engine: FhirEngine, runner: JobRunner) -> None:
    async with engine.db.write() as conn:
        first = await enqueue(conn, "test.ok", {"n": 1}, key="k-1")
        second = await enqueue(conn, "test.ok", {"n": 2}, key="k-1")
    assert first is not None and second is None
    assert await runner.run_once() == 1
    async with engine.db.write() as conn:  # even after it is done
        assert await enqueue(conn, "test.ok", {"n": 3}, key="k-1") is None
    assert await runner.run_once() == 0
    assert RUNS == [("test.ok", 1, 1)]
    rows = await _rows(engine)
    assert [(r.state, r.attempts, r.key) for r in rows] == [("done", 1, "k-1")]


async def test_enqueue_rejects_bad_input_and_writes_nothing(engine: FhirEngine) -> None:
    with pytest.raises(LookupError, match="unknown job kind 'test.nope'"):
        async with engine.db.write() as conn:
            await enqueue(conn, "test.nope", {})
    with pytest.raises(ValueError, match="job key must be 1-255 characters"):
        async with engine.db.write() as conn:
            await enqueue(conn, "test.ok", {"n": 1}, key="x" * 256)
    with pytest.raises(TypeError):
        async with engine.db.write() as conn:
            await enqueue(conn, "test.ok", {"n": object()})
    assert await _rows(engine) == []


def test_registration_rejects_bad_names_and_policies() -> None:
    with pytest.raises(ValueError, match="job name"):
        job("has space")
    with pytest.raises(ValueError, match="max_attempts >= 1"):
        job("test.zero", max_attempts=0)
    assert "test.zero" not in registry.kinds


async def test_failures_back_off_exponentially_then_dead_letter(
    engine: FhirEngine, runner: JobRunner
) -> None:
    async with engine.db.write() as conn:
        pk = await enqueue(conn, "test.fail", {"n": 7})
    delays = []
    for attempt in (1, 2):
        before = utcnow()
        assert await runner.run_once() == 1
        (row,) = await _rows(engine)
        assert (row.state, row.attempts, row.last_error) == (
            "queued",
            attempt,
            f"RuntimeError: boom {attempt}",
        )
        delays.append((row.run_at - before).total_seconds())
        assert await runner.run_once() == 0  # not due before its back-off
        await make_due(engine)
    # 10 s then 20 s, each with jitter in its upper half.
    assert 5 <= delays[0] <= 10.5
    assert 10 <= delays[1] <= 20.5
    assert await runner.run_once() == 1
    (row,) = await _rows(engine)
    assert (row.state, row.attempts, row.last_error) == ("dead", 3, "RuntimeError: boom 3")
    assert row.finished_at is not None
    await make_due(engine)
    assert await runner.run_once() == 0  # the dead stay dead
    assert RUNS == [("test.fail", 1, 7), ("test.fail", 2, 7), ("test.fail", 3, 7)]
    async with engine.db.read() as conn:
        dead = await list_jobs(conn, state="dead")
    assert [(d["id"], d["kind"], d["payload"]) for d in dead] == [(pk, "test.fail", {"n": 7})]
    # An administrator's retry gives it fresh attempts.
    async with engine.db.write() as conn:
        assert await retry_dead(conn, pk) is True
        assert await retry_dead(conn, pk) is False  # queued now, not dead
    assert await runner.run_once() == 1
    assert RUNS[-1] == ("test.fail", 1, 7)


async def test_a_retry_that_succeeds_is_done(engine: FhirEngine, runner: JobRunner) -> None:
    async with engine.db.write() as conn:
        await enqueue(conn, "test.flaky", {"n": 1})
    await runner.run_once()
    await make_due(engine)
    await runner.run_once()
    (row,) = await _rows(engine)
    assert (row.state, row.attempts, row.last_error) == (
        "done",
        2,
        "ConnectionError: first attempt fails",
    )
    assert RUNS == [("test.flaky", 1, 1), ("test.flaky", 2, 1)]


def test_backoff_is_capped_and_jittered() -> None:
    kind = registry.kinds["test.fail"]
    rng = random.Random(5)
    for attempt in range(1, 15):
        delay = backoff(kind, attempt, rng)
        full = min(3600.0, 10 * 2 ** (attempt - 1))
        assert full / 2 <= delay <= full
    assert len({round(backoff(kind, 3, rng), 6) for _ in range(20)}) == 20


async def test_delayed_job_waits_for_run_at(engine: FhirEngine, runner: JobRunner) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    async with engine.db.write() as conn:
        await enqueue(conn, "test.ok", {"n": 1}, run_at=later)
    assert await runner.run_once() == 0
    (row,) = await _rows(engine)
    assert row.run_at == later.replace(tzinfo=None)
    await make_due(engine)
    assert await runner.run_once() == 1
    assert RUNS == [("test.ok", 1, 1)]


async def test_timeout_counts_as_a_failure(engine: FhirEngine, runner: JobRunner) -> None:
    async with engine.db.write() as conn:
        await enqueue(conn, "test.slow", {})
    await runner.run_once()
    (row,) = await _rows(engine)
    assert (row.state, row.last_error) == ("dead", "timed out after 0.2 s")


async def test_lease_expiry_hands_a_killed_workers_job_to_another(engine: FhirEngine) -> None:
    async with engine.db.write() as conn:
        await enqueue(conn, "test.ok", {"n": 1})
        (lost,) = await claim(conn, worker="killed", limit=5, lease_seconds=60)
    other = JobRunner(engine, worker_id="other")
    assert await other.run_once() == 0  # leased: never run twice concurrently
    async with engine.db.write() as conn:  # the lease runs out
        await conn.execute(update(job_table).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert await other.run_once() == 1
    assert RUNS == [("test.ok", 2, 1)]
    async with engine.db.write() as conn:  # the killed worker can no longer finish it
        assert await finish(conn, lost) is False
    (row,) = await _rows(engine)
    assert (row.state, row.attempts, row.locked_by) == ("done", 2, None)


async def test_expired_lease_on_last_attempt_goes_dead(engine: FhirEngine) -> None:
    async with engine.db.write() as conn:
        await enqueue(conn, "test.ok", {"n": 1}, max_attempts=1)
        await claim(conn, worker="killed", limit=5, lease_seconds=60)
        await conn.execute(update(job_table).values(locked_until=utcnow() - timedelta(seconds=1)))
    await JobRunner(engine).run_once()
    (row,) = await _rows(engine)
    assert row.state == "dead"
    assert row.last_error.startswith("the job's lease expired on its last attempt")
    assert RUNS == []


async def test_concurrent_claims_never_share_a_job(engine: FhirEngine) -> None:
    async with engine.db.write() as conn:
        for n in range(60):
            await enqueue(conn, "test.ok", {"n": n})

    async def take(worker: str) -> list[Claimed]:
        taken: list[Claimed] = []
        while True:
            async with engine.db.write() as conn:
                batch = await claim(conn, worker=worker, limit=7, lease_seconds=60)
            if not batch:
                return taken
            taken += batch

    results = await asyncio.gather(*(take(f"w{i}") for i in range(3)))
    pks = [c.pk for taken in results for c in taken]
    assert sorted(pks) == list(range(1, 61))  # each job claimed once, none left out
    async with engine.db.read() as conn:
        running = (
            await conn.execute(
                select(func.count()).select_from(job_table).where(job_table.c.state == "running")
            )
        ).scalar_one()
    assert running == 60


async def test_background_runner_runs_and_stops(engine: FhirEngine) -> None:
    runner = JobRunner(engine, concurrency=2, poll_seconds=0.05, lease_seconds=3)
    await runner.start()
    try:
        async with engine.db.write() as conn:
            for n in range(5):
                await enqueue(conn, "test.ok", {"n": n})
        runner.wake()
        for _ in range(100):
            if len(RUNS) == 5:
                break
            await asyncio.sleep(0.05)
    finally:
        await runner.stop()
    assert sorted(n for _, _, n in RUNS) == [0, 1, 2, 3, 4]
    assert {r.state for r in await _rows(engine)} == {"done"}
