"""The authorization matrix (issue 4): every role × resource category × interaction,
through the HTTP API, including the side doors (_include, _revinclude, _has, chains,
_history, $everything, _total, batch and transaction entries).

A small synthetic county: two family-doctor teams each contracted with one resident, a
resident who delegated viewing to another, a referral to a specialist, a prescription sent
to a pharmacy. Tokens are minted for each role and the same requests are asked by all.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.access.county import JSON, PEOPLE, READERS, contract, delegation, observation

pytestmark = pytest.mark.asyncio(loop_scope="session")


def ids(bundle: dict[str, Any], mode: str | None = None) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if "id" in e.get("resource", {}) and (mode is None or e["search"]["mode"] == mode)
    }


@pytest.mark.parametrize("who", sorted(PEOPLE))
async def test_read_matrix(county: dict[str, httpx.AsyncClient], who: str) -> None:
    """read and vread of every clinical record: allowed exactly for its readers."""
    c = county[who]
    for ref, readers in READERS.items():
        r = await c.get(f"/fhir/R4/{ref}")
        assert r.status_code == (200 if who in readers else 403), (who, ref, r.text)
        if r.status_code == 403:
            assert r.json()["issue"][0]["code"] == "forbidden"
        v = await c.get(f"/fhir/R4/{ref}/_history/1")
        assert v.status_code == (200 if who in readers else 403), (who, ref, "vread")


@pytest.mark.parametrize("who", sorted(PEOPLE))
async def test_directory_is_readable_by_everyone(
    county: dict[str, httpx.AsyncClient], who: str
) -> None:
    r = await county[who].get("/fhir/R4/Organization", params={"_total": "accurate"})
    assert r.status_code == 200, r.text
    assert {"Organization/county", "Organization/village"} <= ids(r.json())


CLINICAL_SEARCHERS = {"resident1", "resident2", "doc1", "doc2", "nurse1", "spec1", "pharm1"}


@pytest.mark.parametrize("who", sorted(PEOPLE))
async def test_search_and_total_show_only_reachable_records(
    county: dict[str, httpx.AsyncClient], who: str
) -> None:
    c = county[who]
    for type_ in ("Observation", "Patient", "MedicationRequest"):
        r = await c.get(f"/fhir/R4/{type_}", params={"_total": "accurate", "_count": "50"})
        if who not in CLINICAL_SEARCHERS:
            assert r.status_code == 403, (who, type_, r.text)
            continue
        assert r.status_code == 200, r.text
        expected = {
            ref
            for ref, readers in READERS.items()
            if who in readers and ref.startswith(type_ + "/")
        }
        assert ids(r.json()) == expected, (who, type_)
        assert r.json()["total"] == len(expected)


@pytest.mark.parametrize("who", sorted(CLINICAL_SEARCHERS))
async def test_includes_revincludes_has_and_chains_do_not_leak(
    county: dict[str, httpx.AsyncClient], who: str
) -> None:
    c = county[who]
    readable = {ref for ref, readers in READERS.items() if who in readers}
    r = await c.get("/fhir/R4/Observation", params={"_include": "Observation:subject"})
    assert ids(r.json()) <= readable | {"Organization/county"}, who
    r = await c.get("/fhir/R4/Patient", params={"_revinclude": "Observation:subject"})
    assert ids(r.json()) <= readable, who
    r = await c.get("/fhir/R4/Patient", params={"_revinclude": "*"})
    # Residents also get the audit trail of their own record (checked in
    # test_delegation_breakglass); everything else must be theirs.
    found = {x for x in ids(r.json()) if not x.startswith("AuditEvent/")}
    assert found <= readable | {
        "Contract/c1",
        "Contract/c2",
        "Consent/consent3",
        "ServiceRequest/ref4",
        "Contract/c5-expired",
    }, who
    r = await c.get("/fhir/R4/Patient", params={"_has:Observation:subject:code": "8480-6"})
    assert ids(r.json()) <= readable, who
    r = await c.get("/fhir/R4/Observation", params={"subject:Patient.family": "王"})
    assert ids(r.json()) <= readable, who
    # Inner criteria only see what the caller sees: the specialist's referral (p4's) must
    # not reveal itself through the open Practitioner directory.
    r = await c.get(
        "/fhir/R4/Practitioner", params={"_has:ServiceRequest:performer:category": "3457005"}
    )
    if r.status_code != 403:
        assert r.status_code == 200, r.text
        visible = (await c.get("/fhir/R4/ServiceRequest/ref4")).status_code == 200
        assert ids(r.json()) == ({"Practitioner/spec1"} if visible else set()), who
    r = await c.get("/fhir/R4/ServiceRequest", params={"performer:Practitioner._id": "spec1"})
    if r.status_code != 403:
        assert ids(r.json()) <= readable, who
    r = await c.get("/fhir/R4/Contract", params={"patient:Patient.family": "王"})
    if r.status_code != 403:
        assert all(ref != "Contract/c2" or "Patient/p2" in readable for ref in ids(r.json())), who
    # The reverse include of a readable patient never brings another patient's records.
    r = await c.get("/fhir/R4/Observation", params={"_include:iterate": "*", "_include": "*"})
    assert all(
        not ref.startswith(("Observation/", "Patient/")) or ref in readable for ref in ids(r.json())
    ), who


@pytest.mark.parametrize("who", sorted(PEOPLE))
async def test_history_and_everything(county: dict[str, httpx.AsyncClient], who: str) -> None:
    c = county[who]
    readable = {ref for ref, readers in READERS.items() if who in readers}
    for ref, readers in READERS.items():
        r = await c.get(f"/fhir/R4/{ref}/_history")
        assert r.status_code == (200 if who in readers else 403), (who, ref, r.text)
    for url in ("/fhir/R4/_history", "/fhir/R4/Observation/_history"):
        r = await c.get(url, params={"_count": "200"})
        if r.status_code == 403:
            continue
        seen = {
            x
            for x in ids(r.json())
            if x.split("/")[0] in ("Observation", "Patient", "MedicationRequest")
        }
        assert seen <= readable, (who, url)
    for pid in ("p1", "p2", "p3", "p4"):
        r = await c.get(f"/fhir/R4/Patient/{pid}/$everything")
        if who not in READERS[f"Patient/{pid}"]:
            assert r.status_code == 403, (who, pid, r.text)
            continue
        assert r.status_code == 200, r.text
        clinical = {x for x in ids(r.json()) if x.split("/")[0] in ("Observation", "Patient")}
        assert clinical <= readable


async def test_batch_and_transaction_entries_are_checked(
    county: dict[str, httpx.AsyncClient],
) -> None:
    c = county["doc1"]
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Observation/o1"}},
            {"request": {"method": "GET", "url": "Observation/o2"}},
            {"request": {"method": "GET", "url": "Observation?_total=accurate"}},
        ],
    }
    r = await c.post("/fhir/R4", json=batch, headers=JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"].startswith("200")
    assert entries[1]["response"]["status"].startswith("403")
    assert ids(entries[2]["resource"]) == {"Observation/o1"}
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation("p1"), "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation("p2"), "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    r = await c.post("/fhir/R4", json=tx, headers=JSON)
    assert r.status_code == 403, r.text
    # Nothing of the refused transaction was written.
    check = await county["system"].get("/fhir/R4/Observation", params={"_total": "accurate"})
    assert check.json()["total"] == 5


async def test_writes_follow_the_care_relationship(county: dict[str, httpx.AsyncClient]) -> None:
    doc = county["doc1"]
    ok = await doc.post("/fhir/R4/Observation", json=observation("p1"), headers=JSON)
    assert ok.status_code == 201, ok.text
    assert (await doc.delete(f"/fhir/R4/Observation/{ok.json()['id']}")).status_code == 204
    other = await doc.post("/fhir/R4/Observation", json=observation("p2"), headers=JSON)
    assert other.status_code == 403
    # Taking over another team's record by pointing it at one's own patient is refused.
    hijack = {**observation("p1"), "id": "o2"}
    assert (await doc.put("/fhir/R4/Observation/o2", json=hijack, headers=JSON)).status_code == 403
    assert (await doc.delete("/fhir/R4/Observation/o2")).status_code == 403
    # A resident records their own readings, not someone else's.
    resident = county["resident1"]
    own = await resident.post("/fhir/R4/Observation", json=observation("p1"), headers=JSON)
    assert own.status_code == 201, own.text
    await county["system"].delete(f"/fhir/R4/Observation/{own.json()['id']}")
    assert (
        await resident.post("/fhir/R4/Observation", json=observation("p2"), headers=JSON)
    ).status_code == 403
    # Administrators without clinical roles cannot write clinical records at all.
    for who in ("admin1", "sysadmin", "secadmin", "auditor", "analyst"):
        r = await county[who].post("/fhir/R4/Observation", json=observation("p1"), headers=JSON)
        assert r.status_code == 403, who


async def test_institution_admin_manages_only_their_organisation(
    county: dict[str, httpx.AsyncClient],
) -> None:
    admin = county["admin1"]
    village = {
        "resourceType": "Organization",
        "id": "village",
        "name": "Village Clinic No. 1",
        "partOf": {"reference": "Organization/county"},
    }
    assert (
        await admin.put("/fhir/R4/Organization/village", json=village, headers=JSON)
    ).status_code == 200
    county_org = {"resourceType": "Organization", "id": "county", "name": "Taken over"}
    assert (
        await admin.put("/fhir/R4/Organization/county", json=county_org, headers=JSON)
    ).status_code == 403
    role = {
        "resourceType": "PractitionerRole",
        "practitioner": {"reference": "Practitioner/doc1"},
        "organization": {"reference": "Organization/village"},
    }
    assert (
        await admin.post("/fhir/R4/PractitionerRole", json=role, headers=JSON)
    ).status_code == 201
    role["organization"] = {"reference": "Organization/county"}
    assert (
        await admin.post("/fhir/R4/PractitionerRole", json=role, headers=JSON)
    ).status_code == 403
    # Their jurisdiction: a new clinic under their organisation, and a Location it manages.
    clinic = {
        "resourceType": "Organization",
        "name": "New village clinic",
        "partOf": {"reference": "Organization/village"},
    }
    made = await admin.post("/fhir/R4/Organization", json=clinic, headers=JSON)
    assert made.status_code == 201, made.text
    site = {
        "resourceType": "Location",
        "name": "Clinic site",
        "managingOrganization": {"reference": f"Organization/{made.json()['id']}"},
    }
    assert (await admin.post("/fhir/R4/Location", json=site, headers=JSON)).status_code == 201
    elsewhere = {**site, "managingOrganization": {"reference": "Organization/county"}}
    assert (await admin.post("/fhir/R4/Location", json=elsewhere, headers=JSON)).status_code == 403
    # A family doctor reads the directory but does not edit it.
    assert (
        await county["doc1"].put("/fhir/R4/Organization/village", json=village, headers=JSON)
    ).status_code == 403


async def test_analyst_counts_but_never_sees_records(county: dict[str, httpx.AsyncClient]) -> None:
    analyst = county["analyst"]
    assert (await analyst.get("/fhir/R4/Observation")).status_code == 403
    assert (await analyst.get("/fhir/R4/Observation/o1")).status_code == 403
    r = await analyst.get("/fhir/R4/Observation", params={"_summary": "count"})
    assert r.status_code == 200, r.text
    body = r.json()
    # Five observations are under the small-count threshold of 5? No: 5 is shown.
    assert body.get("total") == 5
    small = await analyst.get(
        "/fhir/R4/Observation", params={"_summary": "count", "subject": "Patient/p1"}
    )
    assert small.status_code == 200
    assert "total" not in small.json()  # 1 < 5: suppressed
    assert any(e["resource"]["issue"][0]["code"] == "suppressed" for e in small.json()["entry"])
    assert (await analyst.get("/fhir/R4/Patient/p1/$everything")).status_code == 403


async def test_revoked_delegation_stops_access_at_once(
    county: dict[str, httpx.AsyncClient],
) -> None:
    resident, system = county["resident1"], county["system"]
    assert (await resident.get("/fhir/R4/Observation/o3")).status_code == 200
    revoked = {**delegation("p3", "Patient/p1", status="inactive"), "id": "consent3"}
    assert (
        await system.put("/fhir/R4/Consent/consent3", json=revoked, headers=JSON)
    ).status_code == 200
    try:
        assert (await resident.get("/fhir/R4/Observation/o3")).status_code == 403
        search = await resident.get("/fhir/R4/Observation")
        assert "Observation/o3" not in ids(search.json())
    finally:
        restored = {**delegation("p3", "Patient/p1"), "id": "consent3"}
        await system.put("/fhir/R4/Consent/consent3", json=restored, headers=JSON)
    assert (await resident.get("/fhir/R4/Observation/o3")).status_code == 200


async def test_ended_contract_and_changed_team_follow_automatically(
    county: dict[str, httpx.AsyncClient],
) -> None:
    doc1, doc2, system = county["doc1"], county["doc2"], county["system"]
    # Transfer p1 to team2: doc1 loses access, doc2 gains it, in the same write.
    assert (
        await system.put(
            "/fhir/R4/Contract/c1", json={**contract("p1", "team2"), "id": "c1"}, headers=JSON
        )
    ).status_code == 200
    try:
        assert (await doc1.get("/fhir/R4/Observation/o1")).status_code == 403
        assert (await doc2.get("/fhir/R4/Observation/o1")).status_code == 200
    finally:
        await system.put(
            "/fhir/R4/Contract/c1", json={**contract("p1", "team1"), "id": "c1"}, headers=JSON
        )
    assert (await doc1.get("/fhir/R4/Observation/o1")).status_code == 200


async def test_operations_for_people_are_limited(county: dict[str, httpx.AsyncClient]) -> None:
    r = await county["doc1"].post(
        "/fhir/R4/Observation/$validate",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "resource", "resource": observation("p1")}],
        },
        headers=JSON,
    )
    assert r.status_code == 200, r.text
