"""Family delegation with scoped actions, "who accessed my record", and break-the-glass."""

from __future__ import annotations

from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI

from smartmed import audit
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.identity.service import get_identity
from tests.access.county import JSON, delegation, observation
from tests.identity.conftest import BASE, FHIR, PASSWORD, http

pytestmark = pytest.mark.asyncio(loop_scope="session")


def appointment(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "needs-action"}],
    }


async def test_delegated_actions_are_scoped(county: dict[str, httpx.AsyncClient]) -> None:
    resident, system = county["resident1"], county["system"]
    # p3 delegated only "view-records" to p1: p1 reads but may not book for p3.
    assert (await resident.get("/fhir/R4/Observation/o3")).status_code == 200
    refused = await resident.post("/fhir/R4/Appointment", json=appointment("p3"), headers=JSON)
    assert refused.status_code == 403, refused.text
    wider = delegation("p3", "Patient/p1")
    wider["provision"]["action"].append(
        {"coding": [{"system": "urn:smartmed:delegation-action", "code": "book-appointments"}]}
    )
    assert (
        await system.put(
            "/fhir/R4/Consent/consent3", json={**wider, "id": "consent3"}, headers=JSON
        )
    ).status_code == 200
    try:
        booked = await resident.post("/fhir/R4/Appointment", json=appointment("p3"), headers=JSON)
        assert booked.status_code == 201, booked.text
        # Booking is not writing clinical records.
        obs = await resident.post("/fhir/R4/Observation", json=observation("p3"), headers=JSON)
        assert obs.status_code == 403
    finally:
        narrow = {**delegation("p3", "Patient/p1"), "id": "consent3"}
        await system.put("/fhir/R4/Consent/consent3", json=narrow, headers=JSON)


async def test_expired_delegation_gives_nothing(county: dict[str, httpx.AsyncClient]) -> None:
    system, resident2 = county["system"], county["resident2"]
    expired = delegation("p4", "Patient/p2")
    expired["provision"]["period"] = {"start": "2020-01-01", "end": "2021-01-01"}
    r = await system.post("/fhir/R4/Consent", json=expired, headers=JSON)
    assert r.status_code == 201
    try:
        assert (await resident2.get("/fhir/R4/Observation/o4")).status_code == 403
    finally:
        await system.delete(f"/fhir/R4/Consent/{r.json()['id']}")


async def test_resident_sees_who_accessed_their_record(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    assert (await county["doc1"].get("/fhir/R4/Observation/o1")).status_code == 200
    await audit.catch_up(auth_app.state.fhir)
    mine = await county["resident1"].get(
        "/fhir/R4/AuditEvent", params={"patient": "Patient/p1", "_count": "200"}
    )
    assert mine.status_code == 200, mine.text
    agents = {
        who["who"]["reference"]
        for e in mine.json()["entry"]
        if e["search"]["mode"] == "match"
        for who in e["resource"].get("agent", [])
        if "reference" in who.get("who", {})
    }
    assert "Practitioner/doc1" in agents
    # Only events about their own (and delegated) records.
    theirs = await county["resident2"].get("/fhir/R4/AuditEvent", params={"patient": "Patient/p1"})
    assert theirs.status_code == 200
    assert not [e for e in theirs.json().get("entry", []) if e["search"]["mode"] == "match"]
    # Clinicians do not browse the audit trail; the audit administrator does.
    assert (await county["doc1"].get("/fhir/R4/AuditEvent")).status_code == 403
    assert (await county["auditor"].get("/fhir/R4/AuditEvent")).status_code == 200


async def test_a_residents_access_log_never_names_other_patients(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    """A search over several patients is logged per patient (IHE BALP): p1's log shows it
    without revealing that p2 was in the same result."""
    both = await county["system"].get("/fhir/R4/Patient", params={"_id": "p1,p2"})
    assert both.status_code == 200 and both.json()["total"] == 2
    await audit.catch_up(auth_app.state.fhir)
    mine = await county["resident1"].get(
        "/fhir/R4/AuditEvent", params={"patient": "Patient/p1", "_count": "500"}
    )
    assert mine.status_code == 200, mine.text
    events = [e["resource"] for e in mine.json()["entry"] if e["search"]["mode"] == "match"]
    searches = [e for e in events if e["subtype"][0].get("code") == "search-type"]
    assert searches, "the multi-patient search is in p1's access log"
    for event in events:
        assert "Patient/p2" not in str(event), event["id"]


async def _clinician(app: FastAPI, role: Role, practitioner: str) -> tuple[httpx.AsyncClient, str]:
    identity = get_identity(app)
    name = f"bg-{role}-{practitioner.split('/')[1]}"
    account, secret = await identity.accounts.create(
        name,
        PASSWORD,
        fhir_user=practitioner,
        roles=[RoleAssignment(role, "Organization/village")],
        with_totp=True,
    )
    assert secret
    token, _ = await identity.tokens.access_token(
        issuer=BASE,
        audience=FHIR,
        subject=account.id,
        client_id="portal",
        scope="openid fhirUser user/*.cruds",
        fhir_user=practitioner,
        roles=[{"role": str(role), "organization": "Organization/village"}],
    )
    return http(app, headers={"Authorization": f"Bearer {token}"}), secret


async def test_break_the_glass(auth_app: FastAPI, county: dict[str, httpx.AsyncClient]) -> None:
    doctor, secret = await _clinician(auth_app, Role.FAMILY_DOCTOR, "Practitioner/doc1")
    async with doctor:
        assert (await doctor.get("/fhir/R4/Observation/o2")).status_code == 403
        reason = "Unconscious at the township centre, allergy history needed"
        bad = await doctor.post(
            "/api/access/break-glass", json={"patient": "p2", "reason": reason, "totp": "000000"}
        )
        assert bad.status_code == 403
        short = await doctor.post(
            "/api/access/break-glass",
            json={"patient": "p2", "reason": "x", "totp": pyotp.TOTP(secret).now()},
        )
        assert short.status_code in (400, 422)
        assert (await doctor.get("/fhir/R4/Observation/o2")).status_code == 403
        opened = await doctor.post(
            "/api/access/break-glass",
            json={"patient": "Patient/p2", "reason": reason, "totp": pyotp.TOTP(secret).now()},
        )
        assert opened.status_code == 201, opened.text
        grant = opened.json()
        assert grant["patient"] == "Patient/p2" and not grant["reviewed"]
        # That patient only, now readable.
        assert (await doctor.get("/fhir/R4/Observation/o2")).status_code == 200
        assert (await doctor.get("/fhir/R4/Observation/o4")).status_code == 403
        # Reviewers see it; clinicians cannot review.
        assert (await doctor.get("/api/access/break-glass")).status_code == 403
    pending = await county["secadmin"].get("/api/access/break-glass", params={"reviewed": "false"})
    assert pending.status_code == 200
    assert grant["id"] in {item["id"] for item in pending.json()["items"]}
    done = await county["secadmin"].post(
        f"/api/access/break-glass/{grant['id']}/review", json={"note": "justified"}
    )
    assert done.status_code == 200
    after = await county["auditor"].get("/api/access/break-glass", params={"reviewed": "false"})
    assert grant["id"] not in {item["id"] for item in after.json()["items"]}
    # The break-the-glass event is in the patient's audit trail with purpose ETREAT.
    await audit.catch_up(auth_app.state.fhir)
    trail = await county["resident2"].get(
        "/fhir/R4/AuditEvent", params={"patient": "Patient/p2", "_count": "500"}
    )
    purposes = {
        c.get("code")
        for e in trail.json()["entry"]
        for agent in e["resource"].get("agent", [])
        for p in agent.get("purposeOfUse", [])
        for c in p.get("coding", [])
    }
    assert "ETREAT" in purposes


async def test_roles_without_break_glass_cannot(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    r = await county["admin1"].post(
        "/api/access/break-glass",
        json={"patient": "p2", "reason": "curious about it", "totp": "123456"},
    )
    assert r.status_code == 403
    anonymous = await http(auth_app).post(
        "/api/access/break-glass",
        json={"patient": "p2", "reason": "curious about it", "totp": "123456"},
    )
    assert anonymous.status_code == 401
