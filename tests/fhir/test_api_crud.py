"""REST interactions through HTTP, on SQLite and PostgreSQL: the happy paths and their headers."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx

FHIR = {"Content-Type": "application/fhir+json"}


def patient(family: str = "张", given: str = "三", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "gender": "male",
        "birthDate": "1960-05-04",
        **extra,
    }


async def create(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = await client.post(body["resourceType"], json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response


async def test_create_assigns_id_meta_and_headers(client: httpx.AsyncClient) -> None:
    response = await create(client, patient(id="ignored-by-create"))
    body = response.json()
    assert body["id"] != "ignored-by-create"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/R4/Patient/{body['id']}/_history/1")
    assert "last-modified" in response.headers
    assert response.headers["content-type"].startswith("application/fhir+json")


async def test_read_returns_what_was_stored(client: httpx.AsyncClient) -> None:
    created = (await create(client, patient("李", "四"))).json()
    response = await client.get(f"Patient/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == 'W/"1"'


async def test_update_makes_versions_and_vread_reads_each(client: httpx.AsyncClient) -> None:
    created = (await create(client, patient())).json()
    pid = created["id"]
    changed = {**created, "gender": "female"}
    response = await client.put(f"Patient/{pid}", json=changed)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert (await client.get(f"Patient/{pid}/_history/1")).json()["gender"] == "male"
    assert (await client.get(f"Patient/{pid}/_history/2")).json()["gender"] == "female"
    assert (await client.get(f"Patient/{pid}/_history/3")).status_code == 404


async def test_update_as_create_with_client_id(client: httpx.AsyncClient) -> None:
    pid = f"client-{uuid.uuid4().hex[:8]}"
    response = await client.put(f"Patient/{pid}", json=patient(id=pid))
    assert response.status_code == 201
    assert response.json()["id"] == pid
    assert (await client.get(f"Patient/{pid}")).status_code == 200


async def test_if_match_stale_version_is_412_and_nothing_changes(client: httpx.AsyncClient) -> None:
    created = (await create(client, patient())).json()
    pid = created["id"]
    ok = await client.put(f"Patient/{pid}", json=created, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = await client.put(
        f"Patient/{pid}", json={**created, "gender": "other"}, headers={"If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    current = (await client.get(f"Patient/{pid}")).json()
    assert current["meta"]["versionId"] == "2"
    assert current["gender"] == "male"


async def test_delete_keeps_history_and_read_is_410(client: httpx.AsyncClient) -> None:
    created = (await create(client, patient())).json()
    pid = created["id"]
    assert (await client.delete(f"Patient/{pid}")).status_code == 204
    gone = await client.get(f"Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert (await client.get(f"Patient/{pid}/_history/1")).status_code == 200
    assert (await client.get(f"Patient/{pid}/_history/2")).status_code == 410
    history = (await client.get(f"Patient/{pid}/_history")).json()
    assert history["total"] == 2
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    # deleting again is not an error; recreating by update brings version 3
    assert (await client.delete(f"Patient/{pid}")).status_code == 204
    again = await client.put(f"Patient/{pid}", json=created)
    assert again.status_code == 201
    assert again.json()["meta"]["versionId"] == "3"


async def test_unknown_id_is_404_and_unknown_type_is_404(client: httpx.AsyncClient) -> None:
    missing = await client.get("Patient/does-not-exist")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    unknown = await client.get("Patientt/1")
    assert unknown.status_code == 404
    assert unknown.json()["issue"][0]["diagnostics"] == "unknown resource type 'Patientt'"


async def test_prefer_return_minimal_and_operation_outcome(client: httpx.AsyncClient) -> None:
    minimal = await client.post("Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["location"]
    outcome = await client.post(
        "Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"}
    )
    assert outcome.status_code == 201
    assert outcome.json()["resourceType"] == "OperationOutcome"


async def test_patch_applies_json_patch(client: httpx.AsyncClient) -> None:
    created = (await create(client, patient())).json()
    ops = [
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/active", "value": True},
    ]
    response = await client.patch(
        f"Patient/{created['id']}",
        json=ops,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["gender"], body["active"], body["meta"]["versionId"]) == ("female", True, "2")


async def test_patch_producing_an_invalid_resource_is_rejected(client: httpx.AsyncClient) -> None:
    created = (await create(client, patient())).json()
    ops = [{"op": "replace", "path": "/gender", "value": "robot"}]
    response = await client.patch(
        f"Patient/{created['id']}",
        json=ops,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 400
    assert (await client.get(f"Patient/{created['id']}")).json()["meta"]["versionId"] == "1"


async def test_history_type_and_system_with_since_and_paging(client: httpx.AsyncClient) -> None:
    first = (await create(client, {"resourceType": "Organization", "name": "一号卫生院"})).json()
    since = first["meta"]["lastUpdated"]
    for n in range(4):
        await create(client, {"resourceType": "Organization", "name": f"卫生院{n}"})
    page = (await client.get("Organization/_history", params={"_since": since, "_count": 2})).json()
    assert page["total"] == 5
    assert len(page["entry"]) == 2
    seen = [e["resource"]["id"] for e in page["entry"]]
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    # a write between pages must not shift the pages a client is walking
    await create(client, {"resourceType": "Organization", "name": "新来的"})
    page2 = (await client.get(next_url)).json()
    seen += [e["resource"]["id"] for e in page2["entry"]]
    page3 = (
        await client.get(next(x["url"] for x in page2["link"] if x["relation"] == "next"))
    ).json()
    seen += [e["resource"]["id"] for e in page3["entry"]]
    assert len(seen) == 5 == len(set(seen))
    assert first["id"] in seen
    system = (await client.get("_history", params={"_count": 1})).json()
    assert system["type"] == "history"
    assert len(system["entry"]) == 1


async def test_conditional_create_update_delete(client: httpx.AsyncClient) -> None:
    ident = f"1101051949{uuid.uuid4().int % 10**8:08d}"
    body = patient(identifier=[{"system": "urn:smartmed:id:resident", "value": ident}])
    criteria = f"identifier=urn:smartmed:id:resident|{ident}"
    first = await client.post("Patient", json=body, headers={"If-None-Exist": criteria})
    assert first.status_code == 201
    again = await client.post("Patient", json=body, headers={"If-None-Exist": criteria})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    updated = await client.put(f"Patient?{criteria}", json={**body, "gender": "female"})
    assert updated.status_code == 200
    assert updated.json()["id"] == first.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"
    deleted = await client.delete(f"Patient?{criteria}")
    assert deleted.status_code == 204
    assert (await client.get(f"Patient/{first.json()['id']}")).status_code == 410


async def test_conditional_create_with_several_matches_is_412(client: httpx.AsyncClient) -> None:
    family = f"欧阳{uuid.uuid4().hex[:6]}"
    await create(client, patient(family))
    await create(client, patient(family))
    response = await client.post(
        "Patient", json=patient(family), headers={"If-None-Exist": f"family:exact={quote(family)}"}
    )
    assert response.status_code == 412
    search = (await client.get("Patient", params={"family:exact": family})).json()
    assert search["total"] == 2


async def test_idempotency_key_returns_the_first_result(client: httpx.AsyncClient) -> None:
    key = str(uuid.uuid4())
    body = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/x"},
        "medicationCodeableConcept": {"text": "氨氯地平 5mg"},
    }
    first = await client.post("MedicationRequest", json=body, headers={"Idempotency-Key": key})
    retry = await client.post("MedicationRequest", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["idempotent-replayed"] == "true"
    found = (await client.get("MedicationRequest", params={"_id": first.json()["id"]})).json()
    assert found["total"] == 1
    reused = await client.post(
        "MedicationRequest", json={**body, "status": "draft"}, headers={"Idempotency-Key": key}
    )
    assert reused.status_code == 422


async def test_metadata_tells_the_truth(client: httpx.AsyncClient) -> None:
    statement = (await client.get("metadata")).json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    assert len(types) == 146
    patient_params = {p["name"] for p in types["Patient"]["searchParam"]}
    assert {
        "name",
        "family",
        "identifier",
        "birthdate",
        "general-practitioner",
        "_id",
    } <= patient_params
    assert {"code": "transaction"} in rest["interaction"]
    assert any(op["name"] == "validate" for op in types["Patient"]["operation"])


async def test_validate_operation(client: httpx.AsyncClient) -> None:
    good = await client.post("Patient/$validate", json=patient())
    assert good.status_code == 200
    assert good.json()["issue"][0]["severity"] == "information"
    bad = await client.post("Patient/$validate", json=patient(gender="robot"))
    assert bad.status_code == 200
    assert bad.json()["issue"][0]["severity"] == "error"
    assert bad.json()["issue"][0]["expression"] == ["Patient.gender"]
    unknown = await client.post("Patient/$nope", json=patient())
    assert unknown.status_code == 404


async def test_decimals_keep_their_precision(client: httpx.AsyncClient) -> None:
    # datatypes.html#decimal: "0.010 is regarded as different to 0.01"
    raw = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"HbA1c"},'
        b'"component":['
        b'{"code":{"text":"a"},"valueQuantity":{"value":6.50,"unit":"%"}},'
        b'{"code":{"text":"b"},"valueQuantity":{"value":1.000E-22}},'
        b'{"code":{"text":"c"},"valueQuantity":{"value":123456789012345678901234567890.10}}]}'
    )
    created = await client.post("Observation", content=raw)
    assert created.status_code == 201, created.text
    text = (await client.get(f"Observation/{created.json()['id']}")).text
    for literal in ("6.50", "1.000E-22", "123456789012345678901234567890.10"):
        assert literal in text.replace(" ", "") or _pg_equivalent(literal, text)
    found = await client.get(
        "Observation", params={"_id": created.json()["id"], "component-value-quantity": "6.5"}
    )
    assert found.json()["total"] == 1


def _pg_equivalent(literal: str, text: str) -> bool:
    """PostgreSQL JSONB keeps the digits but may print exponents expanded."""
    from decimal import Decimal

    expanded = format(Decimal(literal), "f")
    return expanded in text
