"""Tampering on the raw database is detected by `smartmed audit verify`, with the reason."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError

from smartmed.audit import AuditLog
from smartmed.audit.verify import verify
from smartmed.fhir.context import FhirEngine
from tests.audit.conftest import cli, raw, rec, rows, seed


async def test_an_intact_chain_verifies(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(engine, 10)
    result = await cli(engine, monkeypatch, "audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "10 records, chain intact up to seq 10"


async def test_an_empty_log_verifies(engine: FhirEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    result = await cli(engine, monkeypatch, "audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "0 records, chain intact up to seq 0"


async def test_pending_records_are_reported_not_failed(engine: FhirEngine) -> None:
    await seed(engine, 3)
    audit = AuditLog(engine.db)
    await audit.record(rec(4))
    await audit.close()
    report = await verify(engine.db)
    assert report.summary() == "3 records, chain intact up to seq 3; 1 records not chained yet"


async def test_an_altered_field_is_detected(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(engine, 10)
    body = dict((seq, b) for seq, b, _, _ in await rows(engine))[4]
    forged = body.replace('"outcome":"0"', '"outcome":"4"')
    assert forged != body
    await raw(engine, f"UPDATE audit_log SET body = '{forged}' WHERE seq = 4")
    result = await cli(engine, monkeypatch, "audit", "verify")
    assert result.exit_code == 1
    assert result.output.startswith("chain broken at seq 4: altered")
    assert "(3 records verified before it)" in result.output


async def test_an_altered_hash_is_detected(engine: FhirEngine) -> None:
    await seed(engine, 5)
    await raw(engine, f"UPDATE audit_log SET hash = '{'ab' * 32}' WHERE seq = 2")
    report = await verify(engine.db)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (2, "altered")


async def test_a_removed_hash_is_detected(engine: FhirEngine) -> None:
    await seed(engine, 5)
    await raw(engine, "UPDATE audit_log SET hash = NULL, prev_seq = NULL WHERE seq = 3")
    report = await verify(engine.db)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (3, "altered")


async def test_a_deleted_record_is_detected(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(engine, 10)
    await raw(engine, "DELETE FROM audit_log WHERE seq = 6")
    result = await cli(engine, monkeypatch, "audit", "verify")
    assert result.exit_code == 1
    assert result.output.startswith("chain broken at seq 6: removed")
    assert "record 7 is chained after record 6, which is missing" in result.output


async def test_the_first_record_deleted_is_detected(engine: FhirEngine) -> None:
    await seed(engine, 4)
    await raw(engine, "DELETE FROM audit_log WHERE seq = 1")
    report = await verify(engine.db)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (1, "removed")


async def test_swapped_records_are_detected_as_reordered(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(engine, 10)
    bodies = dict((seq, b) for seq, b, _, _ in await rows(engine))
    await raw(
        engine,
        f"UPDATE audit_log SET body = '{bodies[6]}' WHERE seq = 3",
        f"UPDATE audit_log SET body = '{bodies[3]}' WHERE seq = 6",
    )
    result = await cli(engine, monkeypatch, "audit", "verify")
    assert result.exit_code == 1
    assert result.output.startswith("chain broken at seq 3: reordered")
    assert "holds the content of record 6" in result.output


async def test_swapped_whole_rows_are_detected_as_reordered(engine: FhirEngine) -> None:
    await seed(engine, 6)
    stored = {seq: (b, p, h) for seq, b, p, h in await rows(engine)}
    statements = []
    for seq, other in ((2, 5), (5, 2)):
        body, prev, digest = stored[other]
        statements.append(
            f"UPDATE audit_log SET body = '{body}', prev_seq = {prev}, hash = '{digest}' "
            f"WHERE seq = {seq}"
        )
    await raw(engine, *statements)
    report = await verify(engine.db)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (2, "reordered")


async def test_the_database_refuses_changes_and_deletions(engine: FhirEngine) -> None:
    await seed(engine, 3)
    refused = (IntegrityError, DBAPIError)
    for statement in (
        "UPDATE audit_log SET body = '{}' WHERE seq = 2",
        "UPDATE audit_log SET hash = NULL WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 3",
        "INSERT INTO audit_log (recorded, body, prev_seq, hash) "
        f"VALUES ('2026-01-01 00:00:00', '{{}}', 3, '{'00' * 32}')",
        f"INSERT INTO audit_anchor (seq, hash, pruned_at, cutoff, pruned) "
        f"VALUES (2, '{'00' * 32}', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 2)",
    ):
        with pytest.raises(refused):
            await raw(engine, statement, guards_off=False)
    if engine.db.is_postgres:
        with pytest.raises(refused):
            await raw(engine, "TRUNCATE audit_log", guards_off=False)
    assert len(await rows(engine)) == 3
    assert (await verify(engine.db)).summary() == "3 records, chain intact up to seq 3"


async def test_records_chained_while_verify_reads_are_not_mistaken_for_tampering(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smartmed.audit import verify as verify_module
    from smartmed.audit.chain import chain_pending

    await seed(engine, 2)
    audit = AuditLog(engine.db)
    for n in range(3, 7):
        await audit.record(rec(n))
    await audit.close()
    monkeypatch.setattr(verify_module, "_BATCH", 3)
    real_rows = verify_module._rows
    calls = 0

    async def rows_then_chain(conn, after):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        found = await real_rows(conn, after)
        if calls == 1:  # the chainer links 3..6 between the verifier's reads
            await chain_pending(engine.db)
        return found

    monkeypatch.setattr(verify_module, "_rows", rows_then_chain)
    report = await verify(engine.db)
    assert report.ok, report.summary()
    if engine.db.is_postgres:  # reads in autocommit: the second read sees the new links
        assert report.summary() == "6 records, chain intact up to seq 6"
    else:  # one read transaction: a snapshot from before the chainer ran
        assert report.summary() == "2 records, chain intact up to seq 2; 4 records not chained yet"


async def test_a_backdated_time_column_is_detected(engine: FhirEngine) -> None:
    # Retention pruning goes by the time column: making records look old must not pass.
    await seed(engine, 4)
    await raw(engine, "UPDATE audit_log SET recorded = '2020-01-01 00:00:00' WHERE seq = 3")
    report = await verify(engine.db)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (3, "altered")
    assert "time column of record 3 (2020-01-01T00:00:00.000000Z)" in report.problem.message
