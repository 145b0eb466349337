"""Finding the resident a doctor signs in person (SQLite and PostgreSQL), through the
API and the team page: by resident ID number (sealed at rest, found through the blind
index), by phone, by name + birth date; only residents the doctor's institution may
reach (the caller's access policy), identifiers masked. And a doctor in two teams: the
team page's form field ids are unique per team and every label points at its input."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from smartmed.audit.record import from_body
from smartmed.audit.tables import audit_log
from smartmed.contracting import service
from smartmed.contracting.contracts import Signature
from smartmed.fhir.context import FhirEngine
from smartmed.identity.principal import Role
from smartmed.identity.service import get_identity
from tests.portal.conftest import BASE, browser, csrf_of, follow, login, make_user, portal_app

__all__ = ["portal_app"]
API = "/api/contracting"
RESIDENT_ID = "urn:smartmed:id:resident"
# Synthetic ID numbers (valid check characters; no real person's).
ID_Q1 = "110105195003010120"  # contracted with the doctor's team
ID_Q2 = "330106198806150072"  # shared their records with the doctor's institution
ID_Q3 = "110105196001010332"  # nobody's: the doctor may not reach them
PHONE_Q2 = "13800001234"


def _patient(pid: str, given: str, birth: str, id_number: str, phone: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": RESIDENT_ID, "value": id_number}],
        "name": [{"family": "赵", "given": [given]}],
        "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
        "gender": "female",
        "birthDate": birth,
    }


SEED: list[dict[str, Any]] = [
    {"resourceType": "Organization", "id": "find-org", "name": "Find Health Centre"},
    {"resourceType": "Organization", "id": "find-other", "name": "Another Centre"},
    {"resourceType": "Practitioner", "id": "find-doc", "name": [{"family": "医", "given": ["甲"]}]},
    {"resourceType": "Practitioner", "id": "find-far", "name": [{"family": "医", "given": ["乙"]}]},
    {
        "resourceType": "PractitionerRole",
        "id": "find-doc-role",
        "practitioner": {"reference": "Practitioner/find-doc"},
        "organization": {"reference": "Organization/find-org"},
    },
    *[
        {
            "resourceType": "CareTeam",
            "id": tid,
            "status": "active",
            "name": name,
            "managingOrganization": [{"reference": "Organization/find-org"}],
            "participant": [{"member": {"reference": member}}],
        }
        for tid, name, member in (
            ("find-team-a", "甲团队", "PractitionerRole/find-doc-role"),
            ("find-team-b", "乙团队", "Practitioner/find-doc"),
            ("find-team-far", "远方团队", "Practitioner/find-far"),
        )
    ],
    _patient("find-q1", "一", "1950-03-01", ID_Q1, "13800001111"),
    _patient("find-q2", "二", "1988-06-15", ID_Q2, PHONE_Q2),
    _patient("find-q3", "三", "1960-01-01", ID_Q3, "13800003333"),
    {
        "resourceType": "Consent",
        "id": "find-share-q2",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "urn:smartmed:consent-category", "code": "institution-sharing"}]}
        ],
        "patient": {"reference": "Patient/find-q2"},
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01", "end": "2099-01-01"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": "Organization/find-org"},
                }
            ],
        },
    },
]


async def _seed(app: FastAPI) -> FhirEngine:
    engine: FhirEngine = app.state.fhir
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        for body in SEED:
            await repo.update(body["resourceType"], body["id"], body)
        if not await service.contracts_of(engine, conn, patient="Patient/find-q1"):
            await service.do_sign_in_person(
                engine,
                conn,
                patient="Patient/find-q1",
                team="CareTeam/find-team-a",
                doctor="Practitioner/find-doc",
                signature=Signature("赵 一", True),
            )
    return engine


async def _bearer(app: FastAPI, fhir_user: str, role: str, org: str | None) -> dict[str, str]:
    value, _ = await get_identity(app).tokens.access_token(
        issuer=BASE,
        audience=f"{BASE}/fhir/R4",
        subject=f"account-{fhir_user.replace('/', '-')}",
        client_id="portal",
        scope="openid",
        fhir_user=fhir_user,
        roles=[{"role": role, **({"organization": org} if org else {})}],
    )
    return {"Authorization": f"Bearer {value}"}


async def _find(
    c: httpx.AsyncClient, headers: dict[str, str], **query: str
) -> tuple[int, dict[str, Any]]:
    body = {"team": "CareTeam/find-team-a", **query}
    r = await c.post(f"{API}/residents/search", json=body, headers=headers)
    return r.status_code, r.json()


async def test_find_residents_through_the_api(portal_app: FastAPI) -> None:
    await _seed(portal_app)
    doc = await _bearer(
        portal_app, "Practitioner/find-doc", "family-doctor", "Organization/find-org"
    )
    async with browser(portal_app) as c:
        status, body = await _find(c, doc, idNumber=ID_Q1)
        assert status == 200, body
        (q1,) = body["items"]
        assert q1["patient"] == "Patient/find-q1" and q1["birthDate"] == "1950-03-01"
        assert q1["identifiers"] == ["110***********0120"]
        assert q1["phones"] == ["138****1111"]
        assert ID_Q1 not in str(body) and "13800001111" not in str(body)
        # The phone as people write it (separators): the blind index gets the digits.
        status, body = await _find(c, doc, phone="138-0000-1234")
        assert [i["patient"] for i in body["items"]] == ["Patient/find-q2"]
        status, body = await _find(c, doc, name="赵", birthDate="1988-06-15")
        assert [i["patient"] for i in body["items"]] == ["Patient/find-q2"]
        # A resident the institution may not reach is not found, however exact the search.
        for query in (
            {"idNumber": ID_Q3},
            {"phone": "13800003333"},
            {"name": "赵", "birthDate": "1960-01-01"},
        ):
            status, body = await _find(c, doc, **query)
            assert (status, body["items"]) == (200, []), query
        # Bad input: 400 OperationOutcome.
        for query in (
            {},
            {"idNumber": "110105195003010121"},  # wrong check character
            {"idNumber": "12345"},
            {"phone": "call me"},
            {"name": "赵"},
            {"name": "赵", "birthDate": "1950-13-01"},
            {"surprise": "1"},
        ):
            status, body = await _find(c, doc, **query)
            assert status in (400, 422) and body["resourceType"] == "OperationOutcome", query
        # Another institution's doctor reaches none of them; a team not theirs is refused.
        far = await _bearer(
            portal_app, "Practitioner/find-far", "family-doctor", "Organization/find-other"
        )
        r = await c.post(
            f"{API}/residents/search",
            json={"team": "CareTeam/find-team-far", "idNumber": ID_Q1},
            headers=far,
        )
        assert (r.status_code, r.json()["items"]) == (200, [])
        status, body = await _find(c, far, idNumber=ID_Q1)
        assert status == 403
        resident = await _bearer(portal_app, "Patient/find-q1", "resident", None)
        status, body = await _find(c, resident, idNumber=ID_Q1)
        assert status == 403
    # Each search is audited with the residents found, never with the number typed.
    engine: FhirEngine = portal_app.state.fhir
    async with engine.db.read() as conn:
        bodies = [
            b
            for b in (await conn.execute(select(audit_log.c.body))).scalars().all()
            if "find the resident to sign in person" in b
        ]
    assert bodies and not any(ID_Q1 in b or "13800001111" in b for b in bodies)
    records = [from_body(b) for b in bodies]
    assert any(
        r.patients == ("Patient/find-q1",)
        and r.query == "Patient?identifier=*"
        and r.agent == "Practitioner/find-doc"
        for r in records
    )


def _ids_and_labels(html: str) -> tuple[Counter[str], list[str]]:
    ids = Counter(re.findall(r'\sid="([^"]+)"', html))
    labels = re.findall(r'<label[^>]*\sfor="([^"]+)"', html)
    return ids, labels


async def test_team_page_finds_signs_and_keeps_ids_unique(portal_app: FastAPI) -> None:
    engine = await _seed(portal_app)
    doctor = await make_user(
        portal_app, (Role.FAMILY_DOCTOR, "Organization/find-org"), fhir_user="Practitioner/find-doc"
    )
    async with browser(portal_app, **{"Accept-Language": "en"}) as c:
        await login(c, doctor)
        page = await c.get("/contracting/team")
        assert page.status_code == 200
        # Two teams, two sets of forms, no id twice; every label names an existing id.
        assert page.text.count('data-testid="team"') == 2
        assert page.text.count('data-testid="in-person-form"') == 2
        ids, labels = _ids_and_labels(page.text)
        assert [i for i, n in ids.items() if n > 1] == []
        assert labels and all(ids[target] == 1 for target in labels)
        assert ids["t-find-team-a-ip-typed_name"] == ids["t-find-team-b-ip-typed_name"] == 1
        csrf = csrf_of(page.text)
        search = {"csrf": csrf, "team": "CareTeam/find-team-b", "id_number": ID_Q2.lower()}
        no_csrf = await c.post("/contracting/find", data={**search, "csrf": ""})
        assert no_csrf.status_code == 403
        found = await c.post("/contracting/find", data=search)
        assert found.status_code == 200, found.text
        assert 'data-patient="Patient/find-q2"' in found.text
        assert "330***********0072" in found.text and "138****1234" in found.text
        assert ID_Q2 not in found.text and PHONE_Q2 not in found.text
        ids, labels = _ids_and_labels(found.text)
        assert [i for i, n in ids.items() if n > 1] == []
        assert all(ids[target] == 1 for target in labels)
        assert "t-find-team-b-found-1" in ids and "t-find-team-a-found-1" not in ids
        nobody = await c.post("/contracting/find", data={**search, "id_number": ID_Q3})
        assert 'data-testid="find-none"' in nobody.text
        bad = await c.post("/contracting/find", data={**search, "id_number": "", "name": "赵"})
        assert bad.status_code == 400
        assert 'data-reason="search-name-and-birth"' in bad.text
        assert "Searching by name needs the birth date too." in bad.text
        # Sign the resident found, as the radio button sends them.
        signed = await follow(
            c,
            await c.post(
                "/contracting/in-person",
                data={
                    "csrf": csrf,
                    "team": "CareTeam/find-team-b",
                    "patient": "Patient/find-q2",
                    "typed_name": "赵 二",
                    "agreed": "true",
                },
            ),
        )
        assert "The contract was signed." in signed.text
    async with engine.db.read() as conn:
        (contract,) = await service.contracts_of(engine, conn, patient="Patient/find-q2")
    assert contract["status"] == "executed"
    assert service.team_of(contract) == "CareTeam/find-team-b"
