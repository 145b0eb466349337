"""Concurrent writers of one resource: exactly one wins a version, no update is lost."""

from __future__ import annotations

import asyncio
import uuid

import httpx


async def test_concurrent_if_match_updates_one_wins(client: httpx.AsyncClient) -> None:
    created = (await client.post("Patient", json={"resourceType": "Patient"})).json()
    pid = created["id"]

    async def attempt(n: int) -> int:
        body = {**created, "birthDate": f"19{n + 10}-01-01"}
        response = await client.put(f"Patient/{pid}", json=body, headers={"If-Match": 'W/"1"'})
        return response.status_code

    statuses = await asyncio.gather(*(attempt(n) for n in range(12)))
    assert sorted(statuses) == [200] + [412] * 11
    history = (await client.get(f"Patient/{pid}/_history")).json()
    assert history["total"] == 2


async def test_concurrent_blind_updates_each_get_a_version(client: httpx.AsyncClient) -> None:
    created = (await client.post("Patient", json={"resourceType": "Patient"})).json()
    pid = created["id"]

    async def attempt(n: int) -> str:
        body = {**created, "birthDate": f"19{n + 10}-01-01"}
        response = await client.put(f"Patient/{pid}", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["meta"]["versionId"])

    versions = await asyncio.gather(*(attempt(n) for n in range(12)))
    assert sorted(versions, key=int) == [str(v) for v in range(2, 14)]
    history = (await client.get(f"Patient/{pid}/_history", params={"_count": 50})).json()
    assert history["total"] == 13
    births = {e["resource"]["birthDate"] for e in history["entry"] if "birthDate" in e["resource"]}
    assert len(births) == 12  # every write kept in history: no lost update


async def test_concurrent_update_as_create_same_id(client: httpx.AsyncClient) -> None:
    pid = f"race-{uuid.uuid4().hex[:8]}"
    body = {"resourceType": "Patient", "id": pid}
    statuses = await asyncio.gather(*(client.put(f"Patient/{pid}", json=body) for _ in range(8)))
    codes = sorted(r.status_code for r in statuses)
    assert codes == [200] * 7 + [201]
    assert (await client.get(f"Patient/{pid}")).json()["meta"]["versionId"] == "8"


async def test_concurrent_conditional_creates_make_one(client: httpx.AsyncClient) -> None:
    ident = uuid.uuid4().hex
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": ident}]}
    criteria = f"identifier=urn:race|{ident}"
    responses = await asyncio.gather(
        *(client.post("Patient", json=body, headers={"If-None-Exist": criteria}) for _ in range(8))
    )
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
