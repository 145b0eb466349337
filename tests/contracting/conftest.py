"""A small county for the contracting tests, on the identity tests' application (auth
required, SQLite and PostgreSQL), with a bearer client per person."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from smartmed.identity.service import get_identity
from tests.identity.conftest import BASE, FHIR, auth_app, http, system_token

__all__ = ["auth_app"]
JSON = {"Content-Type": "application/fhir+json"}


def delegation(grantor: str, representative: str, actions: tuple[str, ...]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
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
            {"coding": [{"system": "urn:smartmed:consent-category", "code": "family-delegation"}]}
        ],
        "patient": {"reference": f"Patient/{grantor}"},
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01", "end": "2099-01-01"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                "code": "DELEGATEE",
                            }
                        ]
                    },
                    "reference": {"reference": representative},
                }
            ],
            "action": [
                {"coding": [{"system": "urn:smartmed:delegation-action", "code": a}]}
                for a in actions
            ],
        },
    }


def condition(patient: str, code: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": status,
                }
            ]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


SEED: list[dict[str, Any]] = [
    {"resourceType": "Organization", "id": "town", "name": "Township Health Centre"},
    *[
        {
            "resourceType": "Practitioner",
            "id": pid,
            "name": [{"family": "医", "given": [pid]}],
            "telecom": [{"system": "phone", "value": "0571-0000000"}],
        }
        for pid in ("doc1", "doc2", "nurse1", "doc3")
    ],
    {
        "resourceType": "PractitionerRole",
        "id": "role-doc1",
        "practitioner": {"reference": "Practitioner/doc1"},
        "organization": {"reference": "Organization/town"},
    },
    {
        "resourceType": "CareTeam",
        "id": "team1",
        "status": "active",
        "name": "第一团队",
        "managingOrganization": [{"reference": "Organization/town"}],
        "participant": [
            {"member": {"reference": "PractitionerRole/role-doc1"}},
            {"member": {"reference": "Practitioner/nurse1"}},
        ],
    },
    {
        "resourceType": "CareTeam",
        "id": "team2",
        "status": "active",
        "name": "第二团队",
        "participant": [{"member": {"reference": "Practitioner/doc2"}}],
    },
    *[
        {
            "resourceType": "Patient",
            "id": pid,
            "name": [{"family": "王", "given": [pid]}],
            "birthDate": birth,
        }
        for pid, birth in (
            ("p1", "1950-03-01"),
            ("p2", "1985-06-15"),
            ("p3", "1960-01-01"),
            ("p4", "1940-05-05"),
            ("p5", "1990-01-01"),
            ("p6", "2024-02-29"),
        )
    ],
    {**condition("p1", "I10"), "id": "c1"},
    {**condition("p1", "E11.9", "resolved"), "id": "c2"},
    # p3 may sign for p4 (an elderly parent); p2 may only view p5's records.
    {**delegation("p4", "Patient/p3", ("view-records", "sign-on-behalf")), "id": "consent4"},
    {**delegation("p5", "Patient/p2", ("view-records",)), "id": "consent5"},
    *[
        {
            "resourceType": "Observation",
            "id": f"o-{pid}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {
                "value": 150,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }
        for pid in ("p1", "p2", "p3", "p4", "p5", "p6")
    ],
]

PEOPLE: dict[str, tuple[str, str]] = {
    # name -> (fhirUser, role)
    **{p: (f"Patient/{p}", "resident") for p in ("p1", "p2", "p3", "p4", "p5", "p6")},
    "doc1": ("Practitioner/doc1", "family-doctor"),
    "doc2": ("Practitioner/doc2", "family-doctor"),
    "doc3": ("Practitioner/doc3", "family-doctor"),
    "nurse1": ("Practitioner/nurse1", "nurse"),
}


@pytest.fixture(scope="module")
async def county(auth_app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    seed = await system_token(auth_app)
    async with http(auth_app, headers={"Authorization": f"Bearer {seed}"}) as c:
        for body in SEED:
            r = await c.put(
                f"/fhir/R4/{body['resourceType']}/{body['id']}", json=body, headers=JSON
            )
            assert r.status_code in (200, 201), r.text
    identity = get_identity(auth_app)
    clients: dict[str, httpx.AsyncClient] = {}
    for name, (fhir_user, role) in PEOPLE.items():
        roles: list[dict[str, Any]] = [{"role": role}]
        if role != "resident":
            roles = [{"role": role, "organization": "Organization/town"}]
        token, _ = await identity.tokens.access_token(
            issuer=BASE,
            audience=FHIR,
            subject=f"account-{name}",
            client_id="contracting-tests",
            scope="openid fhirUser user/*.cruds",
            fhir_user=fhir_user,
            roles=roles,
        )
        clients[name] = http(auth_app, headers={"Authorization": f"Bearer {token}"})
    clients["system"] = http(auth_app, headers={"Authorization": f"Bearer {seed}"})
    yield clients
    for client in clients.values():
        await client.aclose()
