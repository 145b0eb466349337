"""A small synthetic county for the access tests, and a token per person.

Two family-doctor teams each contracted with one resident, a resident who delegated
viewing to another, a referral to a specialist, a prescription sent to a pharmacy, an
expired contract.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

from smartmed.identity.service import get_identity
from tests.identity.conftest import BASE, FHIR, http, system_token

JSON = {"Content-Type": "application/fhir+json"}
TEAM_EXT = "urn:smartmed:extension:contract-care-team"


def contract(patient: str, team: str, end: str = "2099-12-31") -> dict[str, Any]:
    return {
        "resourceType": "Contract",
        "status": "executed",
        "subject": [{"reference": f"Patient/{patient}"}],
        "applies": {"start": "2020-01-01", "end": end},
        "extension": [{"url": TEAM_EXT, "valueReference": {"reference": f"CareTeam/{team}"}}],
    }


def delegation(grantor: str, representative: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": status,
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
                {"coding": [{"system": "urn:smartmed:delegation-action", "code": "view-records"}]}
            ],
        },
    }


def observation(patient: str, code: str = "8480-6") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 150, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org"},
    }


SEED: list[dict[str, Any]] = [
    {"resourceType": "Organization", "id": "county", "name": "County Hospital"},
    {
        "resourceType": "Organization",
        "id": "village",
        "name": "Village Clinic",
        "partOf": {"reference": "Organization/county"},
    },
    {"resourceType": "Organization", "id": "pharmacy", "name": "Pharmacy"},
    *[
        {"resourceType": "Practitioner", "id": pid}
        for pid in ("doc1", "doc2", "nurse1", "spec1", "pharm1", "admin1")
    ],
    {
        "resourceType": "CareTeam",
        "id": "team1",
        "participant": [
            {"member": {"reference": "Practitioner/doc1"}},
            {"member": {"reference": "Practitioner/nurse1"}},
        ],
    },
    {
        "resourceType": "CareTeam",
        "id": "team2",
        "participant": [{"member": {"reference": "Practitioner/doc2"}}],
    },
    *[
        {"resourceType": "Patient", "id": pid, "name": [{"family": "王", "given": [pid]}]}
        for pid in ("p1", "p2", "p3", "p4", "p5")
    ],
    {**contract("p1", "team1"), "id": "c1"},
    {**contract("p2", "team2"), "id": "c2"},
    {**contract("p5", "team1", end="2021-01-01"), "id": "c5-expired"},
    {**delegation("p3", "Patient/p1"), "id": "consent3"},
    {
        "resourceType": "ServiceRequest",
        "id": "ref4",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}],
        "subject": {"reference": "Patient/p4"},
        "performer": [{"reference": "Practitioner/spec1"}],
    },
    *[{**observation(f"p{i}"), "id": f"o{i}"} for i in range(1, 6)],
    {
        "resourceType": "MedicationRequest",
        "id": "m2",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "amlodipine 5 mg"},
        "subject": {"reference": "Patient/p2"},
        "dispenseRequest": {"performer": {"reference": "Organization/pharmacy"}},
    },
]

# who -> (fhirUser, [(role, organization)])
PEOPLE: dict[str, tuple[str | None, list[tuple[str, str | None]]]] = {
    "resident1": ("Patient/p1", [("resident", None), ("family-representative", None)]),
    "resident2": ("Patient/p2", [("resident", None)]),
    "doc1": ("Practitioner/doc1", [("family-doctor", "Organization/village")]),
    "doc2": ("Practitioner/doc2", [("family-doctor", "Organization/village")]),
    "nurse1": ("Practitioner/nurse1", [("nurse", "Organization/village")]),
    "spec1": ("Practitioner/spec1", [("specialist", "Organization/county")]),
    "pharm1": ("Practitioner/pharm1", [("pharmacist", "Organization/pharmacy")]),
    "admin1": ("Practitioner/admin1", [("institution-admin", "Organization/village")]),
    "analyst": (None, [("health-authority-analyst", "Organization/county")]),
    "auditor": (None, [("audit-admin", None)]),
    "sysadmin": (None, [("system-admin", None)]),
    "secadmin": (None, [("security-admin", None)]),
}

# Which clinical records each person may read: resource -> readers.
READERS: dict[str, set[str]] = {
    "Observation/o1": {"resident1", "doc1", "nurse1"},
    "Observation/o2": {"resident2", "doc2"},
    "Observation/o3": {"resident1"},  # delegated by p3 to p1
    "Observation/o4": {"spec1"},  # referral
    "Observation/o5": set(),  # contract expired
    "Patient/p1": {"resident1", "doc1", "nurse1"},
    "Patient/p2": {"resident2", "doc2", "pharm1"},
    "Patient/p3": {"resident1"},
    "Patient/p4": {"spec1"},
    "MedicationRequest/m2": {"resident2", "doc2", "pharm1"},
}
EVERYONE = set(PEOPLE)


async def make_county(auth_app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    seed = await system_token(auth_app)
    async with http(auth_app, headers={"Authorization": f"Bearer {seed}"}) as c:
        for body in SEED:
            r = await c.put(
                f"/fhir/R4/{body['resourceType']}/{body['id']}", json=body, headers=JSON
            )
            assert r.status_code in (200, 201), r.text
    identity = get_identity(auth_app)
    clients: dict[str, httpx.AsyncClient] = {}
    for name, (fhir_user, roles) in PEOPLE.items():
        token, _ = await identity.tokens.access_token(
            issuer=BASE,
            audience=FHIR,
            subject=f"account-{name}",
            client_id="matrix",
            scope="openid fhirUser user/*.cruds",
            fhir_user=fhir_user,
            roles=[{"role": role, "organization": org} for role, org in roles if org]
            + [{"role": role} for role, org in roles if not org],
        )
        clients[name] = http(auth_app, headers={"Authorization": f"Bearer {token}"})
    clients["system"] = http(auth_app, headers={"Authorization": f"Bearer {seed}"})
    yield clients
    for client in clients.values():
        await client.aclose()
