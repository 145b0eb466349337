"""Retention: the legal minimum in settings, pruning a prefix with a verifiable anchor."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from smartmed.audit import catch_up
from smartmed.audit.retention import PruneRefused, prune
from smartmed.audit.tables import audit_anchor
from smartmed.audit.verify import verify
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from tests.audit.conftest import cli, raw, rows, seed


def test_retention_defaults_to_six_years_and_refuses_under_six_months() -> None:
    assert Settings().audit_retention_days == 2190
    assert Settings(audit_retention_days=183).audit_retention_days == 183
    for too_short in (182, 30, 0, -1):
        with pytest.raises(ValidationError, match="greater than or equal to 183"):
            Settings(audit_retention_days=too_short)


def test_retention_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTMED_AUDIT_RETENTION_DAYS", "100")
    with pytest.raises(ValidationError, match="audit_retention_days"):
        Settings()
    monkeypatch.setenv("SMARTMED_AUDIT_RETENTION_DAYS", "365")
    assert Settings().audit_retention_days == 365


async def _audit_event_ids(engine: FhirEngine) -> list[str]:
    async with engine.db.read() as conn:
        found = await conn.execute(
            text("SELECT id FROM resource WHERE type = 'AuditEvent' AND deleted = :f"),
            {"f": False},
        )
        return sorted(r[0] for r in found)


async def test_prune_removes_old_records_and_verification_starts_at_the_anchor(
    engine: FhirEngine,
) -> None:
    await seed(engine, 5, days_ago=400)
    await seed(engine, 3, start=6)
    await catch_up(engine)
    assert len(await _audit_event_ids(engine)) == 8

    result = await prune(engine, retention_days=365)
    assert (result.pruned, result.anchor_seq) == (5, 5)
    assert [seq for seq, *_ in await rows(engine)] == [6, 7, 8]
    async with engine.db.read() as conn:
        anchors = (await conn.execute(select(audit_anchor.c.seq, audit_anchor.c.pruned))).all()
    assert [tuple(a) for a in anchors] == [(5, 5)]
    report = await verify(engine.db)
    assert report.summary() == (
        "3 records, chain intact up to seq 8 (from the retention anchor at seq 5)"
    )
    assert await _audit_event_ids(engine) == ["audit-6", "audit-7", "audit-8"]
    again = await prune(engine, retention_days=365)
    assert again.pruned == 0 and "nothing pruned" in again.summary()


async def test_tampering_after_a_prune_is_still_detected(engine: FhirEngine) -> None:
    await seed(engine, 4, days_ago=400)
    await seed(engine, 4, start=5)
    await prune(engine, retention_days=365)
    await raw(engine, "DELETE FROM audit_log WHERE seq = 5")
    report = await verify(engine.db)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (5, "removed")


async def test_prune_stops_at_the_first_young_record(engine: FhirEngine) -> None:
    await seed(engine, 2, days_ago=400)
    await seed(engine, 1, start=3)
    await seed(engine, 2, days_ago=400, start=4)  # old timestamps after a young record
    result = await prune(engine, retention_days=365, now=datetime.now(UTC))
    assert (result.pruned, result.anchor_seq) == (2, 2)
    assert [seq for seq, *_ in await rows(engine)] == [3, 4, 5]


async def test_prune_refuses_a_broken_chain_and_short_retention(engine: FhirEngine) -> None:
    await seed(engine, 4, days_ago=400)
    with pytest.raises(PruneRefused, match="legal minimum of 183 days"):
        await prune(engine, retention_days=100)
    await raw(engine, "DELETE FROM audit_log WHERE seq = 2")
    with pytest.raises(PruneRefused, match="does not verify"):
        await prune(engine, retention_days=365)
    assert [seq for seq, *_ in await rows(engine)] == [1, 3, 4]


async def test_the_database_refuses_deleting_young_records_even_under_an_anchor(
    engine: FhirEngine,
) -> None:
    await seed(engine, 3)
    head = (await rows(engine))[-1]
    # An anchor naming a real record is accepted, but the records are younger than 183 days.
    await raw(
        engine,
        "INSERT INTO audit_anchor (seq, hash, pruned_at, cutoff, pruned) "
        f"VALUES (3, '{head[3]}', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 3)",
        guards_off=False,
    )
    with pytest.raises((IntegrityError, DBAPIError)):
        await raw(engine, "DELETE FROM audit_log WHERE seq = 1", guards_off=False)
    assert len(await rows(engine)) == 3


async def test_prune_command(engine: FhirEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(engine, 3, days_ago=3000)
    await seed(engine, 2, start=4)
    result = await cli(engine, monkeypatch, "audit", "prune")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("pruned 3 records older than ")
    verified = await cli(engine, monkeypatch, "audit", "verify")
    assert verified.output.strip() == (
        "2 records, chain intact up to seq 5 (from the retention anchor at seq 3)"
    )


async def test_prune_removes_every_per_patient_event_of_a_record(engine: FhirEngine) -> None:
    from smartmed.audit import AuditLog
    from smartmed.audit.chain import chain_pending
    from tests.audit.conftest import rec

    log = AuditLog(engine.db)
    await log.record(rec(1, days_ago=400, patients=("Patient/a", "Patient/b", "Patient/c")))
    await log.record(rec(2, days_ago=400))
    await log.record(rec(3))
    await log.close()
    await chain_pending(engine.db)
    await catch_up(engine)
    assert await _audit_event_ids(engine) == [
        "audit-1-1",
        "audit-1-2",
        "audit-1-3",
        "audit-2",
        "audit-3",
    ]
    assert (await prune(engine, retention_days=365)).pruned == 2
    assert await _audit_event_ids(engine) == ["audit-3"]
