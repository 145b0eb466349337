"""Batch and transaction bundles: reference resolution, ordering, all-or-nothing."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import orjson


def entry(
    resource: dict[str, Any], method: str = "POST", url: str | None = None, **extra: Any
) -> dict[str, Any]:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    request = {"method": method, "url": url or resource["resourceType"], **extra}
    return {"fullUrl": full_url, "resource": resource, "request": request}


async def count(client: httpx.AsyncClient, type_: str, **params: str) -> int:
    body = (await client.get(type_, params={**params, "_total": "accurate"})).json()
    return int(body["total"])


async def test_transaction_resolves_urn_uuid_references(client: httpx.AsyncClient) -> None:
    family = f"赵{uuid.uuid4().hex[:6]}"
    pat = entry({"resourceType": "Patient", "name": [{"family": family}]})
    obs = entry(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": pat["fullUrl"]},
            "valueQuantity": {
                "value": 72,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        }
    )
    response = await client.post(
        "", json={"resourceType": "Bundle", "type": "transaction", "entry": [obs, pat]}
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in bundle["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    obs_location = bundle["entry"][0]["response"]["location"]
    pat_location = bundle["entry"][1]["response"]["location"]
    stored_obs = (await client.get(obs_location.split("/_history")[0])).json()
    assert stored_obs["subject"]["reference"] == pat_location.split("/_history")[0]


async def test_transaction_conditional_reference_and_if_none_exist(
    client: httpx.AsyncClient,
) -> None:
    ident = uuid.uuid4().hex
    org = {
        "resourceType": "Organization",
        "identifier": [{"system": "urn:smartmed:org", "value": ident}],
        "name": "乡卫生院",
    }
    first = await client.post(
        "",
        json={
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [entry(org, ifNoneExist=f"identifier=urn:smartmed:org|{ident}")],
        },
    )
    assert first.status_code == 200, first.text
    pat = {
        "resourceType": "Patient",
        "managingOrganization": {"reference": f"Organization?identifier=urn:smartmed:org|{ident}"},
    }
    second = await client.post(
        "",
        json={
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [entry(org, ifNoneExist=f"identifier=urn:smartmed:org|{ident}"), entry(pat)],
        },
    )
    assert second.status_code == 200, second.text
    assert second.json()["entry"][0]["response"]["status"] == "200 OK"
    assert await count(client, "Organization", identifier=f"urn:smartmed:org|{ident}") == 1
    org_id = first.json()["entry"][0]["response"]["location"].split("/")[1]
    pat_loc = second.json()["entry"][1]["response"]["location"].split("/_history")[0]
    stored = (await client.get(pat_loc)).json()
    assert stored["managingOrganization"]["reference"] == f"Organization/{org_id}"


async def test_broken_transaction_rolls_back_everything(client: httpx.AsyncClient) -> None:
    family = f"钱{uuid.uuid4().hex[:6]}"
    good = entry({"resourceType": "Patient", "name": [{"family": family}]})
    bad = entry({"resourceType": "Patient", "name": [{"family": family}], "gender": "robot"})
    response = await client.post(
        "", json={"resourceType": "Bundle", "type": "transaction", "entry": [good, bad]}
    )
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"][0].startswith("Bundle.entry[1]")
    assert await count(client, "Patient", family=family) == 0


async def test_transaction_with_unresolvable_reference_fails_whole(
    client: httpx.AsyncClient,
) -> None:
    family = f"孙{uuid.uuid4().hex[:6]}"
    pat = entry({"resourceType": "Patient", "name": [{"family": family}]})
    obs = entry(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"urn:uuid:{uuid.uuid4()}"},
        }
    )
    response = await client.post(
        "", json={"resourceType": "Bundle", "type": "transaction", "entry": [pat, obs]}
    )
    assert response.status_code == 400
    assert await count(client, "Patient", family=family) == 0


async def test_transaction_update_delete_patch_and_read(client: httpx.AsyncClient) -> None:
    a = (await client.post("Patient", json={"resourceType": "Patient", "gender": "male"})).json()
    b = (await client.post("Patient", json={"resourceType": "Patient", "gender": "male"})).json()
    patch = base64.b64encode(
        orjson.dumps([{"op": "replace", "path": "/gender", "value": "female"}])
    ).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{a['id']}"}},
            {
                "resource": {**a, "gender": "other"},
                "request": {"method": "PUT", "url": f"Patient/{a['id']}"},
            },
            {"request": {"method": "DELETE", "url": f"Patient/{b['id']}"}},
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": patch,
                },
                "request": {"method": "PATCH", "url": f"Patient/{a['id']}"},
            },
        ],
    }
    response = await client.post("", json=bundle)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK", "200 OK", "204 No Content", "200 OK"]
    # GET runs last (spec order): it sees the update and the patch
    assert response.json()["entry"][0]["resource"]["gender"] == "female"
    assert (await client.get(f"Patient/{a['id']}")).json()["meta"]["versionId"] == "3"
    assert (await client.get(f"Patient/{b['id']}")).status_code == 410


async def test_batch_entries_succeed_or_fail_independently(client: httpx.AsyncClient) -> None:
    family = f"周{uuid.uuid4().hex[:6]}"
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            entry({"resourceType": "Patient", "name": [{"family": family}]}),
            entry({"resourceType": "Patient", "name": [{"family": family}], "gender": "robot"}),
            {"request": {"method": "GET", "url": "Patient/not-there"}},
            {"request": {"method": "FROB", "url": "Patient"}},
        ],
    }
    response = await client.post("", json=bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["201", "400", "404", "400"]
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert await count(client, "Patient", family=family) == 1


async def test_bundle_idempotency_key(client: httpx.AsyncClient) -> None:
    family = f"吴{uuid.uuid4().hex[:6]}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry({"resourceType": "Patient", "name": [{"family": family}]})],
    }
    key = str(uuid.uuid4())
    first = await client.post("", json=bundle, headers={"Idempotency-Key": key})
    retry = await client.post("", json=bundle, headers={"Idempotency-Key": key})
    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json()
    assert await count(client, "Patient", family=family) == 1


async def test_bad_bundles_are_rejected_clearly(client: httpx.AsyncClient) -> None:
    not_bundle = await client.post("", json={"resourceType": "Patient"})
    assert not_bundle.status_code == 400
    wrong_type = await client.post("", json={"resourceType": "Bundle", "type": "collection"})
    assert wrong_type.status_code == 400
    no_request = await client.post(
        "",
        json={
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": {"resourceType": "Patient"}}],
        },
    )
    assert no_request.status_code == 400
    assert no_request.json()["issue"][0]["expression"] == ["Bundle.entry[0].request"]
