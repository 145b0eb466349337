"""Search basics through HTTP on both backends: each parameter kind, paging and sorting."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest


async def ids(client: httpx.AsyncClient, type_: str, **params: Any) -> set[str]:
    response = await client.get(type_, params={**params, "_count": 100})
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json()["entry"] if e["search"]["mode"] == "match"}


@pytest.fixture(scope="module")
async def corpus(client: httpx.AsyncClient) -> dict[str, Any]:
    # A tag of CJK characters keeps this module's names apart from other tests' and
    # still reads as a Chinese name (family and given names concatenate only when CJK).
    n = uuid.uuid4().int
    tag = "".join(chr(0x4E00 + (n >> (16 * i)) % 20000) for i in range(3))
    org = (
        await client.post(
            "Organization",
            json={
                "resourceType": "Organization",
                "name": f"城关镇卫生院{tag}",
                "identifier": [{"system": "urn:smartmed:org", "value": f"TC-{tag}"}],
            },
        )
    ).json()
    doc = (
        await client.post(
            "Practitioner",
            json={
                "resourceType": "Practitioner",
                "name": [{"family": f"李{tag}", "given": ["医生"]}],
            },
        )
    ).json()

    async def patient(family: str, given: str, gender: str, birth: str) -> str:
        body = {
            "resourceType": "Patient",
            "name": [{"family": family, "given": [given]}],
            "gender": gender,
            "birthDate": birth,
            "identifier": [{"system": "urn:smartmed:id:resident", "value": f"{tag}-{given}"}],
            "managingOrganization": {"reference": f"Organization/{org['id']}"},
            "generalPractitioner": [{"reference": f"Practitioner/{doc['id']}"}],
        }
        return str((await client.post("Patient", json=body)).json()["id"])

    p1 = await patient(f"王{tag}", "小明", "male", "1950-03-15")
    p2 = await patient(f"王{tag}", "小红", "female", "1985-07")
    p3 = await patient(f"Müller{tag}", "Anna", "female", "2001")

    async def obs(subject: str, code: str, value: float, unit: str, when: str) -> str:
        body = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{subject}"},
            "effectiveDateTime": when,
            "valueQuantity": {
                "value": value,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        }
        return str((await client.post("Observation", json=body)).json()["id"])

    o1 = await obs(p1, "8480-6", 150, "mm[Hg]", "2024-03-01T08:00:00+08:00")
    o2 = await obs(p1, "8480-6", 128, "mm[Hg]", "2024-06-01T08:00:00+08:00")
    o3 = await obs(p2, "8867-4", 72, "/min", "2023-12-31")
    return {"tag": tag, "org": org["id"], "doc": doc["id"], "p": [p1, p2, p3], "o": [o1, o2, o3]}


async def test_string_prefix_chinese_and_accents(
    client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    tag, (p1, p2, p3) = corpus["tag"], corpus["p"]
    assert await ids(client, "Patient", family=f"王{tag}") == {p1, p2}
    assert await ids(client, "Patient", name=f"王{tag}小") == {p1, p2}
    assert await ids(client, "Patient", name=f"王{tag}小明") == {p1}
    assert await ids(client, "Patient", name=f"muller{tag}") == {p3}
    assert await ids(client, "Patient", **{"family:exact": f"Müller{tag}"}) == {p3}
    assert await ids(client, "Patient", **{"family:exact": f"müller{tag}"}) == set()
    assert await ids(client, "Patient", **{"name:contains": f"{tag}小"}) == {p1, p2}


async def test_token_date_reference(client: httpx.AsyncClient, corpus: dict[str, Any]) -> None:
    tag, (p1, p2, p3), org = corpus["tag"], corpus["p"], corpus["org"]
    assert await ids(client, "Patient", identifier=f"urn:smartmed:id:resident|{tag}-小明") == {p1}
    assert await ids(client, "Patient", identifier=f"{tag}-小红") == {p2}
    assert await ids(client, "Patient", family=f"王{tag}", gender="female") == {p2}
    assert await ids(client, "Patient", family=f"王{tag}", **{"gender:not": "female"}) == {p1}
    assert await ids(client, "Patient", organization=f"Organization/{org}") == {p1, p2, p3}
    assert await ids(client, "Patient", organization=org, birthdate="1985") == {p2}
    assert await ids(client, "Patient", organization=org, birthdate="lt1986-01-01") == {p1, p2}
    assert await ids(client, "Patient", organization=org, birthdate="ge1985-07-15") == {p2, p3}
    assert await ids(client, "Patient", organization=org, birthdate="2001-06") == set()
    assert await ids(client, "Patient", organization=org, gender="male,female") == {p1, p2, p3}


async def test_observations_by_subject_code_value_and_date(
    client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    (p1, p2, _), (o1, o2, o3) = corpus["p"], corpus["o"]
    assert await ids(
        client, "Observation", subject=f"Patient/{p1}", code="http://loinc.org|8480-6"
    ) == {o1, o2}
    assert await ids(client, "Observation", patient=p1, **{"value-quantity": "gt140"}) == {o1}
    assert await ids(
        client,
        "Observation",
        patient=p1,
        **{"value-quantity": "128|http://unitsofmeasure.org|mm[Hg]"},
    ) == {o2}
    assert await ids(client, "Observation", subject=f"Patient/{p1}", date="2024-03") == {o1}
    # 2024-03-01T08:00+08:00 is 2024-03-01T00:00Z
    assert await ids(
        client, "Observation", subject=f"Patient/{p1}", date="lt2024-03-01T00:00:01Z"
    ) == {o1}
    assert await ids(client, "Observation", subject=f"Patient/{p2}", date="2023") == {o3}


async def test_chained_reference(client: httpx.AsyncClient, corpus: dict[str, Any]) -> None:
    tag, (o1, o2, o3) = corpus["tag"], corpus["o"]
    assert await ids(client, "Observation", **{"subject:Patient.name": f"王{tag}小明"}) == {o1, o2}
    assert await ids(client, "Observation", **{"patient.family": f"王{tag}"}) == {o1, o2, o3}
    assert await ids(client, "Patient", **{"general-practitioner.family": f"李{tag}"}) == set(
        corpus["p"]
    )


async def test_id_last_updated_missing(client: httpx.AsyncClient, corpus: dict[str, Any]) -> None:
    (p1, p2, p3) = corpus["p"]
    assert await ids(client, "Patient", _id=f"{p1},{p3}") == {p1, p3}
    assert await ids(client, "Patient", _id=p1, _lastUpdated="gt2000-01-01") == {p1}
    assert await ids(client, "Patient", _id=p1, _lastUpdated="lt2000-01-01") == set()
    assert await ids(client, "Patient", _id=f"{p1},{p2}", **{"telecom:missing": "true"}) == {p1, p2}


async def test_paging_sorting_and_total(client: httpx.AsyncClient, corpus: dict[str, Any]) -> None:
    org = corpus["org"]
    first = (
        await client.get(
            "Patient",
            params={"organization": org, "_count": 2, "_sort": "-birthdate", "_total": "accurate"},
        )
    ).json()
    assert first["total"] == 3
    births = [e["resource"]["birthDate"] for e in first["entry"]]
    assert births == ["2001", "1985-07"]
    next_url = next(x["url"] for x in first["link"] if x["relation"] == "next")
    second = (await client.get(next_url)).json()
    assert [e["resource"]["birthDate"] for e in second["entry"]] == ["1950-03-15"]
    assert not any(x["relation"] == "next" for x in second["link"])
    count = (await client.get("Patient", params={"organization": org, "_summary": "count"})).json()
    assert (count["total"], count.get("entry", [])) == (3, [])


async def test_elements_and_unknown_parameters(
    client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    p1 = corpus["p"][0]
    body = (await client.get("Patient", params={"_id": p1, "_elements": "gender"})).json()
    resource = body["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert resource["meta"]["tag"][-1]["code"] == "SUBSETTED"
    lenient = await client.get("Patient", params={"_id": p1, "colour": "red"})
    assert lenient.status_code == 200
    entries = lenient.json()["entry"]
    assert [e["search"]["mode"] for e in entries] == ["match", "outcome"]
    assert "colour" not in next(x["url"] for x in lenient.json()["link"] if x["relation"] == "self")
    strict = await client.get(
        "Patient", params={"_id": p1, "colour": "red"}, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400


async def test_post_search(client: httpx.AsyncClient, corpus: dict[str, Any]) -> None:
    tag, (p1, p2, _) = corpus["tag"], corpus["p"]
    response = await client.post(
        "Patient/_search",
        content=f"family=王{tag}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {p1, p2}
