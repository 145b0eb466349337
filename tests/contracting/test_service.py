"""The contracting service directly: links, renewal windows, reminders, and the
"one contract at a time" rule under concurrent signings (PostgreSQL and SQLite)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from smartmed.contracting import flows, lifecycle, links, service, tasks
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError

SIG = service.Signature("王 签名", True)
NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def engine_of(app: FastAPI) -> FhirEngine:
    engine: FhirEngine = app.state.fhir
    return engine


async def all_contracts(engine: FhirEngine, patient: str) -> list[dict[str, Any]]:
    async with engine.db.read() as conn:
        return await service.contracts_of(engine, conn, patient=patient)


async def test_links_expire_and_cannot_be_altered(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    engine = engine_of(auth_app)
    async with engine.db.read() as conn:
        token, expires = await flows.make_card_link(
            engine, conn, doctor="Practitioner/nurse1", team="CareTeam/team1", now=NOW
        )
        with pytest.raises(FhirError) as refused:
            await flows.make_card_link(
                engine, conn, doctor="Practitioner/doc2", team="CareTeam/team1", now=NOW
            )
    assert service.reason_of(refused.value) == "not-team-member"
    assert expires == NOW + timedelta(days=365)
    link = flows.open_link(engine, token, now=expires - timedelta(seconds=1))
    assert (link.kind, link.team, link.doctor, link.method) == (
        "card",
        "CareTeam/team1",
        "Practitioner/nurse1",
        "qr-card",
    )
    with pytest.raises(links.LinkError) as expired:
        flows.open_link(engine, token, now=expires)
    assert expired.value.reason == "link-expired"
    # Changing any claim (a longer expiry, another team) breaks the signature.
    body, sig = token.split(".")
    claims = orjson.loads(links._unb64(body))  # noqa: SLF001
    for change in ({"e": claims["e"] + 10**6}, {"team": "CareTeam/team2"}):
        forged = links._b64(orjson.dumps({**claims, **change})) + "." + sig  # noqa: SLF001
        with pytest.raises(links.LinkError) as bad:
            flows.open_link(engine, forged, now=NOW)
        assert bad.value.reason == "link-invalid"
    # Tokens are not guessable: two cards for the same doctor differ.
    async with engine.db.read() as conn:
        again, _ = await flows.make_card_link(
            engine, conn, doctor="Practitioner/nurse1", team="CareTeam/team1", now=NOW
        )
    assert again != token


async def test_renewal_window_and_one_step_renewal(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    engine = engine_of(auth_app)
    signed_at = NOW - timedelta(days=300)
    async with engine.db.write() as conn:
        first = await service.do_sign_in_person(
            engine,
            conn,
            patient="Patient/p3",
            team="CareTeam/team2",
            doctor="Practitioner/doc2",
            signature=SIG,
            now=signed_at,
        )
    assert first["applies"] == {"start": "2026-01-26", "end": "2027-01-25"}
    for when, reason in (
        (signed_at + timedelta(days=1), "too-early"),
        (NOW + timedelta(days=200), "too-late"),
    ):
        with pytest.raises(FhirError) as refused:
            async with engine.db.write() as conn:
                await lifecycle.do_renew(
                    engine, conn, contract_id=first["id"], actor="Patient/p3", now=when
                )
        assert service.reason_of(refused.value) == reason
    async with engine.db.write() as conn:
        renewed = await lifecycle.do_renew(
            engine, conn, contract_id=first["id"], actor="Patient/p3", now=NOW
        )
    assert renewed["status"] == "executed"
    assert renewed["applies"] == {"start": "2027-01-26", "end": "2028-01-25"}
    assert service.replaces_of(renewed) == (f"Contract/{first['id']}", "renewal")
    with pytest.raises(FhirError) as twice:
        async with engine.db.write() as conn:
            await lifecycle.do_renew(
                engine, conn, contract_id=first["id"], actor="Practitioner/doc2", now=NOW
            )
    assert service.reason_of(twice.value) == "already-renewed"
    history = await all_contracts(engine, "Patient/p3")
    assert [c["id"] for c in history] == [renewed["id"], first["id"]]
    # Both stay executed: one now, one from the end of the first; never overlapping.
    async with engine.db.read() as conn:
        now_c = await service.current_contract(engine, conn, patient="Patient/p3", at=NOW)
        later = await service.current_contract(
            engine, conn, patient="Patient/p3", at=datetime(2027, 6, 1, tzinfo=UTC)
        )
    assert (now_c or {}).get("id") == first["id"]
    assert (later or {}).get("id") == renewed["id"]


async def test_renewal_reminders_once_per_contract(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    engine = engine_of(auth_app)
    async with engine.db.write() as conn:
        ending = await service.do_sign_in_person(
            engine,
            conn,
            patient="Patient/p5",
            team="CareTeam/team2",
            doctor="Practitioner/doc2",
            signature=SIG,
            now=NOW - timedelta(days=350),
        )
    _start, end = service.bounds(ending)
    before = end - timedelta(days=40)
    assert f"Contract/{ending['id']}" not in await tasks.send_renewal_reminders(engine, now=before)
    due = end - timedelta(days=20)
    assert f"Contract/{ending['id']}" in await tasks.send_renewal_reminders(engine, now=due)
    await tasks.send_renewal_reminders(engine, now=due + timedelta(days=1))
    key = f"contract-renewal:{ending['id']}:{ending['applies']['end']}"
    async with engine.db.read() as conn:
        count = (
            await conn.execute(text("SELECT count(*) FROM notification WHERE key = :k"), {"k": key})
        ).scalar()
        communications = (
            await county["system"].get(
                "/fhir/R4/Communication",
                params={"recipient": "Patient/p5", "_total": "accurate"},
            )
        ).json()
    assert count == 1
    assert communications["total"] == 1
    # A renewed contract is not reminded again.
    async with engine.db.write() as conn:
        await lifecycle.do_renew(
            engine, conn, contract_id=ending["id"], actor="Patient/p5", now=due
        )
    later = await tasks.send_renewal_reminders(engine, now=due + timedelta(days=2))
    assert f"Contract/{ending['id']}" not in later


async def test_concurrent_signings_give_one_contract(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    """Twelve signings of one resident at once, by both teams and both ways: exactly one
    executed contract (PostgreSQL: concurrent transactions; SQLite: serialised writer)."""
    engine = engine_of(auth_app)
    patient = "Patient/p1"
    before = await all_contracts(engine, patient)
    assert all(
        c["status"] != "executed" or not service.is_in_force(c, service.now_utc()) for c in before
    )

    async def in_person(team: str, doctor: str) -> str:
        try:
            async with engine.db.write() as conn:
                await service.do_sign_in_person(
                    engine, conn, patient=patient, team=team, doctor=doctor, signature=SIG
                )
        except FhirError as exc:
            return service.reason_of(exc)
        return "signed"

    async def apply(team: str) -> str:
        try:
            async with engine.db.write() as conn:
                await service.do_apply(
                    engine, conn, patient=patient, team=team, applicant=patient, signature=SIG
                )
        except FhirError as exc:
            return service.reason_of(exc)
        return "applied"

    attempts = [in_person("CareTeam/team1", "Practitioner/doc1") for _ in range(4)]
    attempts += [in_person("CareTeam/team2", "Practitioner/doc2") for _ in range(4)]
    attempts += [apply("CareTeam/team2") for _ in range(4)]
    outcomes = await asyncio.gather(*attempts)
    assert set(outcomes) <= {"signed", "applied", "already-contracted", "already-pending"}
    assert outcomes.count("signed") <= 1 and outcomes.count("applied") <= 1
    after = await all_contracts(engine, patient)
    new = [c for c in after if c["id"] not in {b["id"] for b in before}]
    in_force = [c for c in new if service.is_in_force(c, service.now_utc())]
    pending = [c for c in new if c["status"] == "offered"]
    # Exactly one signing won; an application that came after it is a transfer request
    # (to the other team), which the review would turn into a transfer, never a second
    # contract in force.
    assert (
        len(in_force) + len(pending)
        == len(new)
        == outcomes.count("signed") + outcomes.count("applied")
    )
    assert len(in_force) <= 1 and len(pending) <= 1
    if in_force and pending:
        assert service.replaces_of(pending[0]) == (f"Contract/{in_force[0]['id']}", "transfer")
        assert service.team_of(pending[0]) != service.team_of(in_force[0])
