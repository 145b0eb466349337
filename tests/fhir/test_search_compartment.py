"""Compartment search and Patient/$everything through HTTP, on both backends."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.fhir.search.compartment import compartments

SYSTEM = "urn:smartmed:test:compartment"


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post(body["resourceType"], json=body)
    assert response.status_code == 201, response.text
    return f"{body['resourceType']}/{response.json()['id']}"


def ref(key: str) -> dict[str, str]:
    return {"reference": key}


async def keys(client: httpx.AsyncClient, url: str, params: Any = None) -> set[str]:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    found = [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in response.json().get("entry", [])
        if e["search"]["mode"] == "match"
    ]
    assert len(found) == len(set(found))
    return set(found)


@pytest.fixture(scope="module")
async def world(client: httpx.AsyncClient) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    org = await create(client, {"resourceType": "Organization", "name": f"o-{tag}"})
    doc = await create(client, {"resourceType": "Practitioner", "name": [{"family": tag}]})
    med = await create(client, {"resourceType": "Medication", "status": "active"})
    p1 = await create(
        client,
        {"resourceType": "Patient", "generalPractitioner": [ref(doc)],
         "managingOrganization": ref(org)},
    )  # fmt: skip
    p2 = await create(client, {"resourceType": "Patient"})
    p3 = await create(
        client, {"resourceType": "Patient", "link": [{"other": ref(p1), "type": "seealso"}]}
    )
    enc = await create(
        client,
        {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
         "subject": ref(p1)},
    )  # fmt: skip

    def obs(letter: str, subject: str, **more: Any) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": SYSTEM, "code": f"{letter}-{tag}"}]},
            "subject": ref(subject),
            **more,
        }

    o1 = await create(client, obs("A", p1))
    o2 = await create(client, obs("B", p1, encounter=ref(enc)))
    o3 = await create(client, obs("A", p2, performer=[ref(doc)]))
    # p1 performed an observation on p2: in both patients' compartments.
    o4 = await create(client, obs("C", p2, performer=[ref(p1)]))
    mr = await create(
        client,
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
         "subject": ref(p1), "medicationReference": ref(med)},
    )  # fmt: skip
    gone = await create(client, obs("A", p1))
    assert (await client.delete(gone)).status_code in (200, 204)
    return {
        "tag": tag, "org": org, "doc": doc, "med": med, "p": [p1, p2, p3], "enc": enc,
        "o": [o1, o2, o3, o4], "mr": mr, "gone": gone,
    }  # fmt: skip


def code(world: dict[str, Any], letter: str) -> str:
    return f"{SYSTEM}|{letter}-{world['tag']}"


async def test_patient_compartment_is_the_equivalent_search(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    (p1, p2, p3), (o1, o2, o3, o4) = world["p"], world["o"]
    # Observation is in the Patient compartment by subject or performer.
    equivalent = await keys(client, "Observation", {"subject": p1}) | await keys(
        client, "Observation", {"performer": p1}
    )
    assert await keys(client, f"{p1}/Observation") == equivalent == {o1, o2, o4}
    assert await keys(client, f"{p1}/Observation", {"code": code(world, "A")}) == {o1}
    assert await keys(client, f"{p2}/Observation") == {o3, o4}
    assert await keys(client, f"{p1}/Patient") == {p3}  # Patient: by `link` only
    assert await keys(client, f"{p1}/MedicationRequest") == {world["mr"]}


async def test_other_compartments(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    (p1, _, _), (_, o2, o3, _), doc, enc = world["p"], world["o"], world["doc"], world["enc"]
    assert await keys(client, f"{doc}/Observation") == {o3}
    assert await keys(client, f"{doc}/Patient") == {p1}
    assert await keys(client, f"{enc}/Observation") == {o2}
    assert await keys(client, f"{enc}/Encounter") == {enc}  # {def}: the owner itself


async def test_compartment_paging_and_include(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    (p1, _, _), (o1, o2, _, o4) = world["p"], world["o"]
    page = (await client.get(f"{p1}/Observation", params={"_count": 2})).json()
    next_url = next(x["url"] for x in page["link"] if x["relation"] == "next")
    assert f"/{p1}/Observation?" in next_url
    rest = {e["resource"]["id"] for e in (await client.get(next_url)).json()["entry"]}
    first = {e["resource"]["id"] for e in page["entry"]}
    assert first | rest == {k.split("/")[1] for k in (o1, o2, o4)} and not first & rest
    body = (
        await client.get(f"{p1}/Observation", params={"_include": "Observation:encounter"})
    ).json()
    included = {e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "include"}
    assert included == {world["enc"].split("/")[1]}


@pytest.mark.parametrize(
    "path",
    ["Observation/1/Patient", "Medication/1/Observation", "Patient/1/Medication", "Patient/1/Foo"],
)
async def test_bad_compartments(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_compartments_come_from_the_definitions() -> None:
    table = compartments(locate_definitions(None))
    assert set(table) == {"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"}
    assert table["Patient"]["Observation"] == ("subject", "performer")
    assert table["Encounter"]["Encounter"] == ("{def}",)


# --- $everything -----------------------------------------------------------------------------


async def test_everything(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    (p1, _, p3), (o1, o2, _, o4) = world["p"], world["o"]
    body = (await client.get(f"{p1}/$everything", params={"_count": 100})).json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    got = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["search"]["mode"]
        for e in body["entry"]
    }
    first = body["entry"][0]["resource"]
    assert f"{first['resourceType']}/{first['id']}" == p1
    members = {p1, p3, world["enc"], o1, o2, o4, world["mr"]}
    referenced = {world["doc"], world["org"], world["med"]}
    assert got == {**dict.fromkeys(members, "match"), **dict.fromkeys(referenced, "include")}
    assert body["total"] == len(members | referenced)


async def test_everything_type_since_and_paging(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    (p1, _, _), (o1, o2, _, o4) = world["p"], world["o"]
    typed = await client.get(f"{p1}/$everything", params={"_type": "Observation,Encounter"})
    found = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in typed.json()["entry"]
    }
    assert found == {o1, o2, o4, world["enc"]}
    await asyncio.sleep(0.01)
    updated = await client.put(o2, json={**(await client.get(o2)).json(), "status": "amended"})
    since = updated.json()["meta"]["lastUpdated"]
    recent = await client.get(f"{p1}/$everything", params={"_since": since})
    assert [e["resource"]["id"] for e in recent.json()["entry"]] == [o2.split("/")[1]]
    seen: list[str] = []
    url: str | None = f"{p1}/$everything?_count=3"
    pages = 0
    while url is not None:
        page = (await client.get(url)).json()
        assert page["total"] == 10
        seen += [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in page["entry"]]
        url = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
        assert url is None or url.startswith("http://testserver/fhir/R4/Patient/")
        assert all(e["fullUrl"].startswith("http://testserver/fhir/R4/") for e in page["entry"])
        pages += 1
    assert pages == 4 and len(seen) == len(set(seen)) == 10 and seen[0] == p1


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("Patient/nobody-here/$everything", {}, 404),
        ("Observation/1/$everything", {}, 404),
        ("{p1}/$everything", {"_type": "Foo"}, 400),
        ("{p1}/$everything", {"start": "2020"}, 400),
        ("{p1}/$everything", {"_since": "yesterday"}, 400),
        ("{p1}/$everything", {"_count": "-1"}, 400),
    ],
)
async def test_everything_errors(
    client: httpx.AsyncClient, world: dict[str, Any], path: str, params: Any, status: int
) -> None:
    response = await client.get(path.format(p1=world["p"][0]), params=params)
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
