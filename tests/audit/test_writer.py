"""Group commit: concurrent records share INSERTs, each durable before record() returns."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from sqlalchemy import func, select, text

from smartmed.audit import AuditLog, AuditUnavailable, BadRecord
from smartmed.audit.chain import chain_pending
from smartmed.audit.verify import verify
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.tables import resource
from tests.audit.conftest import rec, rows


async def test_200_concurrent_records_are_all_stored_in_few_commits_and_chain(
    engine: FhirEngine,
) -> None:
    audit = AuditLog(engine.db)
    await asyncio.gather(*(audit.record(rec(n)) for n in range(200)))
    assert audit.written == 200
    assert 1 <= audit.batches <= 10  # group commit: not one transaction per record
    stored = await rows(engine)
    assert len(stored) == 200
    assert sorted(orjson.loads(body)["entities"][0] for _, body, _, _ in stored) == sorted(
        f"Observation/o{n}" for n in range(200)
    )
    assert [seq for seq, *_ in stored] == list(range(1, 201))
    assert await chain_pending(engine.db) == 200
    report = await verify(engine.db)
    assert report.ok and report.records == 200 and report.head_seq == 200
    assert report.summary() == "200 records, chain intact up to seq 200"
    await audit.close()


async def test_a_record_is_committed_when_record_returns(engine: FhirEngine) -> None:
    audit = AuditLog(engine.db)
    await audit.record(rec(1))
    # A new connection (not the writer's) sees it at once.
    async with engine.db.read() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM audit_log")) == 1
    await audit.close()


async def test_concurrent_records_during_chaining_keep_the_chain_in_order(
    engine: FhirEngine,
) -> None:
    audit = AuditLog(engine.db)

    async def chain_often() -> None:
        for _ in range(20):
            await chain_pending(engine.db)
            await asyncio.sleep(0)

    await asyncio.gather(chain_often(), *(audit.record(rec(n)) for n in range(300)))
    await chain_pending(engine.db)
    report = await verify(engine.db)
    assert report.summary() == "300 records, chain intact up to seq 300"
    await audit.close()


async def test_bad_records_are_refused_and_nothing_is_stored(engine: FhirEngine) -> None:
    audit = AuditLog(engine.db)
    with pytest.raises(BadRecord, match="action"):
        await audit.record(rec(1, action="X"))
    with pytest.raises(BadRecord, match="outcome"):
        await audit.record(rec(1, outcome="2"))
    with pytest.raises(BadRecord, match="subtype"):
        await audit.record(rec(1, subtype=""))
    await audit.close()
    assert await rows(engine) == []


async def test_a_closed_log_refuses_records(engine: FhirEngine) -> None:
    audit = AuditLog(engine.db)
    await audit.record(rec(1))
    await audit.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        await audit.record(rec(2))
    assert len(await rows(engine)) == 1


async def test_close_stores_records_still_queued(engine: FhirEngine) -> None:
    audit = AuditLog(engine.db, window=0.05)
    pending = [asyncio.ensure_future(audit.record(rec(n))) for n in range(30)]
    await asyncio.sleep(0)  # queued, the writer is waiting out its window
    await audit.close()
    await asyncio.gather(*pending)
    assert len(await rows(engine)) == 30


async def test_a_cancelled_caller_does_not_cancel_its_record(engine: FhirEngine) -> None:
    audit = AuditLog(engine.db, window=0.02)
    task = asyncio.ensure_future(audit.record(rec(1)))
    await asyncio.sleep(0)
    task.cancel()
    await audit.close()
    assert len(await rows(engine)) == 1


async def test_an_unwritable_database_fails_the_caller(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A database without the audit tables: the INSERT fails; record() must raise, not hang.
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('bare')}/bare.db"
    bare = FhirEngine.build(Settings(database_url=url))
    audit = AuditLog(bare.db, retries=1)
    with pytest.raises(AuditUnavailable, match="could not be stored"):
        await asyncio.wait_for(audit.record(rec(1)), 10)
    await audit.close()
    await bare.db.dispose()


async def test_several_writers_at_once_keep_seq_order_equal_to_commit_order(
    engine: FhirEngine,
) -> None:
    # Several AuditLogs stand for several app processes, each with its own connection;
    # the chainer runs meanwhile. No record may be committed below a chained one.
    logs = [AuditLog(engine.db) for _ in range(4)]
    stop = asyncio.Event()

    async def chain_until_stopped() -> None:
        while not stop.is_set():
            await chain_pending(engine.db)
            await asyncio.sleep(0)

    chainer = asyncio.ensure_future(chain_until_stopped())
    await asyncio.gather(*(log.record(rec(n)) for n in range(100) for log in logs))
    stop.set()
    await chainer
    await chain_pending(engine.db)
    report = await verify(engine.db)
    assert report.summary() == "400 records, chain intact up to seq 400"
    for log in logs:
        await log.close()


async def test_workers_chain_and_materialise_when_the_app_only_appends(
    engine: FhirEngine,
) -> None:
    """SMARTMED_JOBS_IN_APP=false: the app appends; ``maintain`` (in ``smartmed worker``)
    chains and materialises every record, once."""
    from smartmed import audit as audit_module
    from smartmed.audit.tables import audit_log

    engine.settings = engine.settings.model_copy(
        update={"jobs_in_app": False, "audit_chain_interval_seconds": 0.05}
    )
    log = audit_module.install(engine)
    for n in range(1, 26):
        await log.record(rec(n))
    await log.flush()
    await asyncio.sleep(0.2)  # the app does no maintenance of its own
    async with engine.db.read() as conn:
        unchained = await conn.scalar(
            select(func.count()).select_from(audit_log).where(audit_log.c.hash.is_(None))
        )
    assert unchained == 25
    stopped = asyncio.Event()
    worker = asyncio.create_task(audit_module.maintain(engine, stopped))
    for _ in range(100):
        async with engine.db.read() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(resource).where(resource.c.type == "AuditEvent")
            )
        if count == 25:
            break
        await asyncio.sleep(0.05)
    stopped.set()
    await worker
    await log.close()
    assert count == 25
