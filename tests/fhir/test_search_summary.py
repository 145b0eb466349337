"""_summary (checked against the isSummary flags of the definitions), _total, _contained."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from smartmed.fhir.definitions import package
from smartmed.fhir.definitions.locate import locate_definitions

NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}


def flags(type_: str) -> dict[str, tuple[bool, int]]:
    """Element path -> (isSummary, min), straight from the StructureDefinition."""
    sd = package.structure_definition(locate_definitions(None), type_)
    assert sd is not None
    return {
        e["path"]: (bool(e.get("isSummary")), e.get("min", 0)) for e in sd["snapshot"]["element"]
    }


@pytest.fixture(scope="module")
async def world(client: httpx.AsyncClient) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    patient = {
        "resourceType": "Patient",
        "text": NARRATIVE,
        "identifier": [{"system": "urn:smartmed:test:summary", "value": tag}],
        "name": [{"family": f"F{tag}", "given": ["G"]}],
        "gender": "female",
        "birthDate": "1980-02-03",
        "_birthDate": {"extension": [{"url": "urn:x", "valueString": "approx"}]},
        "maritalStatus": {"text": "married"},
        "contact": [{"name": {"family": "C"}}],
        "communication": [{"language": {"text": "zh"}}],
        "extension": [{"url": "urn:smartmed:ext", "valueString": "v"}],
    }
    p = (await client.post("Patient", json=patient)).json()
    observation = {
        "resourceType": "Observation",
        "text": NARRATIVE,
        "status": "final",
        "category": [{"text": "vital-signs"}],
        "code": {"coding": [{"system": "urn:smartmed:test:summary", "code": tag}]},
        "subject": {"reference": f"Patient/{p['id']}"},
        "valueQuantity": {"value": 1.50, "unit": "mg"},
        "interpretation": [{"text": "H"}],
        "referenceRange": [{"text": "normal"}],
        "component": [
            {"code": {"text": "part"}, "valueString": "x", "interpretation": [{"text": "L"}]}
        ],
    }
    o = (await client.post("Observation", json=observation)).json()
    return {"tag": tag, "patient": p, "observation": o}


async def one(client: httpx.AsyncClient, type_: str, params: dict[str, str]) -> dict[str, Any]:
    response = await client.get(type_, params=params)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert len(entries) == 1
    resource: dict[str, Any] = entries[0]["resource"]
    assert resource["meta"]["tag"][-1]["code"] == "SUBSETTED"
    return resource


def top_level(type_: str, resource: dict[str, Any], keep: Any) -> set[str]:
    """The keys of ``resource`` whose top-level element ``keep(isSummary, min)`` accepts."""
    out = {"resourceType"}
    for path, element in flags(type_).items():
        head = path.removeprefix(f"{type_}.")
        if "." in head or head == type_:
            continue
        for key in resource:
            name = key.lstrip("_")
            rest = name.removeprefix(head.removesuffix("[x]"))
            if name == head or (head.endswith("[x]") and rest[:1].isupper()):
                if keep(*element):
                    out.add(key)
    return out


async def test_summary_true_follows_is_summary(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    table = flags("Patient")
    # What the flags say (not a guess): these are the cases the test relies on.
    assert all(table[f"Patient.{n}"][0] for n in ("name", "gender", "birthDate", "identifier"))
    assert not any(table[f"Patient.{n}"][0] for n in ("contact", "communication", "text"))
    stored = world["patient"]
    got = await one(client, "Patient", {"_id": stored["id"], "_summary": "true"})
    assert set(got) == top_level("Patient", stored, lambda summary, low: summary or low > 0)
    assert {"name", "gender", "birthDate", "_birthDate", "identifier", "meta", "id"} <= set(got)
    assert not {"contact", "communication", "maritalStatus", "text", "extension"} & set(got)
    assert got["name"] == stored["name"]


async def test_summary_true_inside_backbone_elements(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    table = flags("Observation")
    assert table["Observation.component"][0] and table["Observation.component.code"][0]
    assert not table["Observation.component.interpretation"][0]
    assert table["Observation.status"][1] == 1 and not table["Observation.category"][0]
    stored = world["observation"]
    got = await one(client, "Observation", {"_id": stored["id"], "_summary": "true"})
    assert set(got) == top_level("Observation", stored, lambda summary, low: summary or low > 0)
    assert got["component"] == [{"code": {"text": "part"}, "valueString": "x"}]
    assert got["valueQuantity"] == {"value": 1.50, "unit": "mg"}
    assert not {"category", "interpretation", "referenceRange", "text"} & set(got)


async def test_summary_text_and_data(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    stored = world["observation"]
    text = await one(client, "Observation", {"_id": stored["id"], "_summary": "text"})
    # text, id, meta and the mandatory top-level elements (status and code are 1..1).
    assert set(text) == {"resourceType", "id", "meta", "text", "status", "code"}
    patient = await one(client, "Patient", {"_id": world["patient"]["id"], "_summary": "text"})
    assert set(patient) == {"resourceType", "id", "meta", "text"}
    data = await one(client, "Observation", {"_id": stored["id"], "_summary": "data"})
    assert set(data) == set(stored) - {"text"}
    assert data["component"] == stored["component"]


async def test_summary_applies_to_included_resources(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    params = {
        "_id": world["observation"]["id"],
        "_summary": "true",
        "_include": "Observation:subject",
    }
    entries = (await client.get("Observation", params=params)).json()["entry"]
    patient = next(e["resource"] for e in entries if e["search"]["mode"] == "include")
    assert "contact" not in patient and patient["gender"] == "female"
    assert patient["meta"]["tag"][-1]["code"] == "SUBSETTED"


async def test_summary_false_and_count(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    params = {"_id": world["patient"]["id"]}
    full = (await client.get("Patient", params={**params, "_summary": "false"})).json()
    assert full["entry"][0]["resource"]["contact"] == world["patient"]["contact"]
    count = (await client.get("Patient", params={**params, "_summary": "count"})).json()
    assert count["total"] == 1 and not count.get("entry")


async def test_total(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    params = {"_id": world["patient"]["id"]}
    for mode in ("accurate", "estimate"):
        body = (await client.get("Patient", params={**params, "_total": mode})).json()
        assert body["total"] == 1
    none = (await client.get("Patient", params={**params, "_total": "none"})).json()
    assert "total" not in none and len(none["entry"]) == 1


async def test_contained_defaults(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    params = {"_id": world["patient"]["id"]}
    ok = await client.get("Patient", params={**params, "_contained": "false"})
    assert ok.status_code == 200 and len(ok.json()["entry"]) == 1
    plain = await client.get("Patient", params={**params, "_containedType": "container"})
    assert plain.status_code == 200


@pytest.mark.parametrize(
    ("key", "value"),
    [("_summary", "bogus"), ("_contained", "true"), ("_contained", "both"),
     ("_containedType", "contained")],
)  # fmt: skip
async def test_bad_values(client: httpx.AsyncClient, key: str, value: str) -> None:
    response = await client.get("Patient", params={key: value})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == [key]
