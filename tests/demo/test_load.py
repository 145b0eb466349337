"""Loading the county through the engine (SQLite and PostgreSQL) and the demo accounts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import func, select

from smartmed.config import Settings
from smartmed.demo.accounts import DEMO_PASSWORD, demo_totp_secret
from smartmed.demo.generator import generate_county
from smartmed.demo.load import load_county, load_demo, merge, resolve_references
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from smartmed.fhir.storage.tables import resource, resource_history
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box, load_secret
from smartmed.identity.principal import Role
from smartmed.identity.tables import account, role_assignment
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

STAFF = {
    "doctor1": Role.FAMILY_DOCTOR,
    "doctor2": Role.FAMILY_DOCTOR,
    "nurse1": Role.NURSE,
    "phworker1": Role.PUBLIC_HEALTH_WORKER,
    "specialist1": Role.SPECIALIST,
    "pharmacist1": Role.PHARMACIST,
    "hospadmin1": Role.INSTITUTION_ADMIN,
    "analyst1": Role.HEALTH_AUTHORITY_ANALYST,
    "platformadmin1": Role.PLATFORM_ADMIN,
}
PUBLIC = {"resident1": Role.RESIDENT, "family1": Role.FAMILY_REPRESENTATIVE}


def _generated(residents: int, seed: int) -> Counter[str]:
    return Counter(
        e["resource"]["resourceType"]
        for b in generate_county(residents=residents, seed=seed)
        for e in b["entry"]
    )


async def _stored(engine: FhirEngine) -> tuple[Counter[str], int]:
    async with engine.db.read() as conn:
        rows = (
            await conn.execute(select(resource.c.type, func.count()).group_by(resource.c.type))
        ).all()
        history = (
            await conn.execute(select(func.count()).select_from(resource_history))
        ).scalar_one()
    return Counter({str(t): int(n) for t, n in rows}), int(history)


def _settings(url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=url, secret_key="test-secret-key-for-the-demo-tests")


def test_resolved_households_carry_no_conditional_reference() -> None:
    county = generate_county(residents=60, seed=4)
    organisations = next(county)
    targets = {
        f"{e['resource']['resourceType']}?identifier={i['system']}|{i['value']}": f"X/{n}"
        for n, e in enumerate(organisations["entry"])
        for i in e["resource"].get("identifier", [])
    }
    merged = list(merge(county, 7))
    assert sum(people for _, people in merged) == 60
    assert all(len({e["fullUrl"] for e in b["entry"]}) == len(b["entry"]) for b, _ in merged)

    def references(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["reference"]] if isinstance(node.get("reference"), str) else []
            return own + [r for v in node.values() for r in references(v)]
        if isinstance(node, list):
            return [r for v in node for r in references(v)]
        return []

    before = [r for b, _ in merged for r in references(b)]
    assert any("?identifier=" in r for r in before)
    for bundle, _ in merged:
        resolve_references(bundle, targets)
    after = [r for b, _ in merged for r in references(b)]
    assert not [r for r in after if "?" in r]
    assert len(after) == len(before)


async def _load_and_check(
    settings: Settings,
    *,
    concurrency: int | None,
    processes: int = 1,
    bulk: bool = False,
    workers: int | None = None,
) -> None:
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        report = await load_county(
            engine,
            residents=90,
            seed=8,
            households_per_transaction=6,
            concurrency=concurrency,
            processes=processes,
            show_progress=False,
            bulk=bulk,
            workers=workers,
        )
        expected = _generated(90, 8)
        assert report.created == expected
        stored, history = await _stored(engine)
        assert stored == expected  # every resource stored, once
        assert history == sum(expected.values())  # each with its version 1 in the history
        assert report.households == len(list(generate_county(residents=90, seed=8))) - 1
    finally:
        await engine.db.dispose()


async def test_load_on_sqlite(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    settings = _settings(f"sqlite+aiosqlite:///{tmp_path}/demo.db", tmp_path)
    await _load_and_check(settings, concurrency=1)


async def test_bulk_load_on_sqlite(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    settings = _settings(f"sqlite+aiosqlite:///{tmp_path}/demo.db", tmp_path)
    await _load_and_check(settings, concurrency=None, bulk=True, workers=1)


@pytest.mark.postgres
async def test_bulk_load_on_postgres(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    url = await create_pg_database()
    try:
        await _load_and_check(_settings(url, tmp_path), concurrency=3, bulk=True, workers=2)
    finally:
        await drop_pg_database(url)


@pytest.mark.postgres
async def test_load_on_postgres_with_concurrent_transactions(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    url = await create_pg_database()
    try:
        await _load_and_check(_settings(url, tmp_path), concurrency=3)
    finally:
        await drop_pg_database(url)


@pytest.mark.postgres
async def test_load_on_postgres_with_two_loader_processes(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    url = await create_pg_database()
    try:
        await _load_and_check(_settings(url, tmp_path), concurrency=2, processes=2)
    finally:
        await drop_pg_database(url)


async def test_several_processes_need_postgres(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    engine = FhirEngine.build(_settings(f"sqlite+aiosqlite:///{tmp_path}/x.db", tmp_path))
    try:
        await migrate(engine.db)
        with pytest.raises(ValueError, match="PostgreSQL"):
            await load_county(
                engine, residents=5, seed=1, processes=2, show_progress=False, bulk=False
            )
        with pytest.raises(ValueError, match="worker processes"):
            await load_county(engine, residents=5, seed=1, processes=2, show_progress=False)
        assert await _stored(engine) == (Counter(), 0)  # nothing written
    finally:
        await engine.db.dispose()


async def test_demo_accounts_log_in_and_load_is_idempotent(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    settings = _settings(f"sqlite+aiosqlite:///{tmp_path}/demo.db", tmp_path)
    printed = await load_demo(settings, residents=40, seed=3, if_empty=False)
    assert DEMO_PASSWORD in printed and "DEMO-ONLY" in printed
    for username in STAFF:
        secret = demo_totp_secret(username)
        assert secret in printed
        assert f"otpauth://totp/smartmed:{username}?secret={secret}" in printed

    engine = FhirEngine.build(settings)
    try:
        accounts = Accounts(engine.db, Box(load_secret(settings)))
        for username, role in (STAFF | PUBLIC).items():
            result = await accounts.login(username, DEMO_PASSWORD)
            assert result.account is not None, (username, result.error)
            assert [r.role for r in result.account.roles] == [role]
            assert result.account.needs_second_factor == (username in STAFF)
            kind, _, id_ = (result.account.fhir_user or "").partition("/")
            expected = {"resident1": "Patient", "family1": "RelatedPerson"}.get(
                username, "Practitioner"
            )
            assert kind == expected
            async with engine.db.read() as conn:
                found = (
                    await conn.execute(
                        select(resource.c.id).where(resource.c.type == kind, resource.c.id == id_)
                    )
                ).scalar_one_or_none()
            assert found == id_  # linked to a stored FHIR identity
            if username in STAFF:
                organisation = result.account.roles[0].organization or ""
                assert organisation.startswith("Organization/")
                code = pyotp.TOTP(demo_totp_secret(username)).now()
                assert await accounts.verify_totp(result.account.id, code)
        assert (await accounts.login("doctor1", "wrong-password-1")).account is None
    finally:
        await engine.db.dispose()

    skipped = await load_demo(settings, residents=40, seed=3, if_empty=True)
    assert "not loaded" in skipped
    again = await load_demo(settings, residents=40, seed=3, if_empty=False)
    assert "doctor1 (existed)" in again
    engine = FhirEngine.build(settings)
    try:
        async with engine.db.read() as conn:
            names = (await conn.execute(select(account.c.username))).scalars().all()
            assignments = (
                await conn.execute(select(func.count()).select_from(role_assignment))
            ).scalar_one()
        stored, _ = await _stored(engine)
    finally:
        await engine.db.dispose()
    assert sorted(names) == sorted(STAFF | PUBLIC)  # no account twice
    assert assignments == len(STAFF | PUBLIC)
    assert stored["Patient"] == 80  # without --if-empty a second county of residents is added
    assert stored["Organization"] == _generated(40, 3)["Organization"]  # reused, not doubled
