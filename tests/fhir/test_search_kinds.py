"""Composite, special (near), :of-type, :identifier, :in/:not-in, uri :above/:below, UCUM
quantities and _text/_content through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from smartmed.fhir.search.geo import distance_m

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
RESIDENT_ID = "urn:oid:2.16.156.10011.1.2"
XHTML = "http://www.w3.org/1999/xhtml"


async def ids(client: httpx.AsyncClient, type_: str, **params: Any) -> set[str]:
    response = await client.get(type_, params={**params, "_count": 100})
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post(body["resourceType"], json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code}]}


@pytest.fixture(scope="module")
async def obs(client: httpx.AsyncClient) -> dict[str, str]:
    """Observations of one new patient, by name."""
    pid = await create(client, {"resourceType": "Patient", "name": [{"family": "血压"}]})

    async def observation(name: str, code: str, **extra: Any) -> tuple[str, str]:
        body = {
            "resourceType": "Observation",
            "status": "final",
            "code": concept(code),
            "subject": {"reference": f"Patient/{pid}"},
            **extra,
        }
        return name, await create(client, body)

    def component(code: str, value: float) -> dict[str, Any]:
        return {"code": concept(code), "valueQuantity": quantity(value, "mm[Hg]")}

    made = dict(
        [
            # Blood pressure panels: systolic high in one, only diastolic "high" in the other.
            await observation(
                "panel-high",
                "85354-9",
                component=[component("8480-6", 150), component("8462-4", 90)],
            ),
            await observation(
                "panel-swapped",
                "85354-9",
                component=[component("8480-6", 120), component("8462-4", 150)],
            ),
            # Systolic alone: 145 mmHg; 120 mmHg with a component of 150 under another code.
            await observation("systolic", "8480-6", valueQuantity=quantity(145, "mm[Hg]")),
            await observation(
                "systolic-low",
                "8480-6",
                valueQuantity=quantity(120, "mm[Hg]"),
                component=[component("8462-4", 150)],
            ),
            await observation("potassium", "2823-3", valueQuantity=quantity(5.4, "mmol/L")),
            await observation("weight", "29463-7", valueQuantity=quantity(1, "kg")),
            await observation("glucose", "2339-0", valueQuantity=quantity(100, "mg/dL")),
            await observation("fever", "8310-5", valueQuantity=quantity(38.5, "Cel")),
            await observation("onset", "11368-8", valueDateTime="2024-03-05"),
            await observation("colour", "5778-6", valueCodeableConcept=concept("LA12345-6")),
        ]
    )
    return {"patient": pid, **made}


async def test_composite_pairs_components_within_one_element(
    client: httpx.AsyncClient, obs: dict[str, str]
) -> None:
    pid = f"Patient/{obs['patient']}"

    async def find(param: str, value: str) -> set[str]:
        found = await ids(client, "Observation", subject=pid, **{param: value})
        return {name for name, oid in obs.items() if oid in found}

    high = f"{LOINC}|8480-6$gt140"
    # The diastolic 150 of panel-swapped and of systolic-low never pairs with 8480-6.
    assert await find("component-code-value-quantity", high) == {"panel-high"}
    assert await find("code-value-quantity", high) == {"systolic"}
    assert await find("combo-code-value-quantity", high) == {"panel-high", "systolic"}
    assert await find("code-value-quantity", f"{LOINC}|8480-6$lt130") == {"systolic-low"}
    # OR-ed composite values, units converted inside the pair: 140 mmHg is 18.67 kPa.
    either = f"{LOINC}|8480-6$gt18|{UCUM}|kPa,{LOINC}|2823-3$5.4"
    assert await find("code-value-quantity", either) == {"systolic", "potassium"}
    assert await find("code-value-quantity", "8462-4$gt140") == set()
    assert await find("component-code-value-quantity", "8462-4$gt140") == {
        "panel-swapped",
        "systolic-low",
    }
    assert await find("code-value-date", f"{LOINC}|11368-8$2024-03") == {"onset"}
    assert await find("code-value-date", f"{LOINC}|11368-8$gt2024-03-05") == set()
    assert await find("code-value-concept", f"{LOINC}|5778-6${LOINC}|LA12345-6") == {"colour"}
    assert await find("code-value-concept", f"{LOINC}|8480-6${LOINC}|LA12345-6") == set()
    assert await find("code-value-quantity:missing", "true") == {
        "onset",
        "colour",
        "panel-high",
    } | {"panel-swapped"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"5.4|{UCUM}|mmol/L", {"potassium"}),
        (f"5400|{UCUM}|umol/L", {"potassium"}),
        (f"5.4|{UCUM}|mmol/dm3", {"potassium"}),
        (f"1000|{UCUM}|g", {"weight"}),
        (f"1|{UCUM}|kg", {"weight"}),
        (f"1000000|{UCUM}|mg", {"weight"}),
        (f"ge0.5|{UCUM}|kg", {"weight"}),
        (f"lt999|{UCUM}|g", set()),
        (f"2.20462|{UCUM}|[lb_av]", {"weight"}),
        # mmol/L and mg/dL have different dimensions (no molar mass): never converted.
        (f"100|{UCUM}|mmol/L", set()),
        (f"100|{UCUM}|mg/dL", {"glucose"}),
        (f"1|{UCUM}|g/L", {"glucose"}),
        # Special units (Cel) are not converted, but match by their code.
        (f"38.5|{UCUM}|Cel", {"fever"}),
        (f"311.65|{UCUM}|K", set()),
        # Without a system, the code is compared as written.
        ("1||kg", {"weight"}),
        ("1000||g", set()),
    ],
)
async def test_ucum_canonical_quantities(
    client: httpx.AsyncClient, obs: dict[str, str], value: str, expected: set[str]
) -> None:
    found = await ids(
        client, "Observation", subject=f"Patient/{obs['patient']}", **{"value-quantity": value}
    )
    assert {name for name, oid in obs.items() if oid in found} == expected


async def test_of_type_resident_id_and_reference_identifier(client: httpx.AsyncClient) -> None:
    number = "11010519491231002X"  # an 18-digit resident identity card number

    def resident(code: str, value: str) -> dict[str, Any]:
        kind = {"coding": [{"system": V2_0203, "code": code}], "text": "居民身份证"}
        return {"type": kind, "system": RESIDENT_ID, "value": value}

    p1 = await create(client, {"resourceType": "Patient", "identifier": [resident("NI", number)]})
    p2 = await create(
        client, {"resourceType": "Patient", "identifier": [resident("NNCHN", number)]}
    )
    plain = {"system": RESIDENT_ID, "value": number}
    p3 = await create(client, {"resourceType": "Patient", "identifier": [plain]})
    key = "identifier:of-type"
    assert await ids(client, "Patient", **{key: f"{V2_0203}|NI|{number}"}) == {p1}
    assert await ids(client, "Patient", **{key: f"{V2_0203}|NNCHN|{number}"}) == {p2}
    assert await ids(client, "Patient", **{key: f"{V2_0203}|MR|{number}"}) == set()
    assert await ids(client, "Patient", **{key: f"{V2_0203}|NI|{number[:-1]}"}) == set()
    assert await ids(client, "Patient", identifier=f"{RESIDENT_ID}|{number}") == {p1, p2, p3}
    # A reference that carries only an identifier (no literal reference).
    obs = await create(
        client,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": concept("8480-6"),
            "subject": {"identifier": {"system": RESIDENT_ID, "value": number}},
        },
    )
    found = await ids(client, "Observation", **{"subject:identifier": f"{RESIDENT_ID}|{number}"})
    assert found == {obs}
    assert await ids(client, "Observation", **{"subject:identifier": number}) == {obs}
    assert (
        await ids(client, "Observation", **{"subject:identifier": f"urn:other|{number}"}) == set()
    )


async def test_in_and_not_in_value_sets(client: httpx.AsyncClient, obs: dict[str, str]) -> None:
    vital = "http://hl7.org/fhir/ValueSet/observation-vitalsignresult"
    subject = f"Patient/{obs['patient']}"
    found = await ids(client, "Observation", subject=subject, **{"code:in": vital})
    vitals = {"panel-high", "panel-swapped", "systolic", "systolic-low", "weight", "fever"}
    assert {name for name, oid in obs.items() if oid in found} == vitals
    found = await ids(client, "Observation", subject=subject, **{"code:not-in": vital})
    others = {"potassium", "glucose", "onset", "colour"}
    assert {name for name, oid in obs.items() if oid in found} == others
    # `code` elements (no system) match the value set's codes.
    gender = "http://hl7.org/fhir/ValueSet/administrative-gender"
    pid = await create(client, {"resourceType": "Patient", "gender": "female"})
    assert await ids(client, "Patient", _id=pid, **{"gender:in": gender}) == {pid}
    assert await ids(client, "Patient", _id=pid, **{"gender:not-in": gender}) == set()


async def test_uri_above_and_below(client: httpx.AsyncClient) -> None:
    host = f"http://{uuid.uuid4().hex[:12]}.acme.org"

    async def value_set(url: str) -> str:
        return await create(client, {"resourceType": "ValueSet", "status": "active", "url": url})

    vs123 = await value_set(f"{host}/fhir/ValueSet/123")
    vs1234 = await value_set(f"{host}/fhir/ValueSet/1234")
    fhir = await value_set(f"{host}/fhir")
    above = f"{host}/fhir/ValueSet/123/_history/5"
    assert await ids(client, "ValueSet", **{"url:above": above}) == {vs123, fhir}
    assert await ids(client, "ValueSet", **{"url:below": f"{host}/fhir/ValueSet/123"}) == {vs123}
    assert await ids(client, "ValueSet", **{"url:below": f"{host}/fhir/"}) == {vs123, vs1234, fhir}
    assert await ids(client, "ValueSet", url=f"{host}/fhir/ValueSet/123") == {vs123}


async def test_location_near(client: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:12]
    points = {
        "tiananmen": (39.9087, 116.3975),
        "station": (39.9029, 116.4270),  # 2.6 km away
        "north": (39.9356, 116.3975),  # 2.99 km due north
        "tianjin": (39.1256, 117.1909),  # 110.5 km away
        "suva": (-18.1416, 178.4419),  # Fiji, just west of the antimeridian
    }
    made = {
        name: await create(
            client,
            {
                "resourceType": "Location",
                "name": f"{tag} {name}",
                "position": {"latitude": lat, "longitude": lon},
            },
        )
        for name, (lat, lon) in points.items()
    }

    async def near(value: str) -> set[str]:
        found = await ids(client, "Location", name=f"{tag}", near=value)
        return {n for n, lid in made.items() if lid in found}

    here = points["tiananmen"]
    for km in (0.5, 2.7, 3.0, 100, 120, 20_000):
        expected = {n for n, p in points.items() if distance_m(here, p) <= km * 1000}
        assert await near(f"{here[0]}|{here[1]}|{km}|km") == expected, km
    assert await near(f"{here[0]}|{here[1]}|2995|m") == {"tiananmen", "station", "north"}
    assert await near(f"{here[0]}|{here[1]}|2985|m") == {"tiananmen", "station"}
    assert await near(f"{here[0]}|{here[1]}|2|[mi_i]") == {"tiananmen", "station", "north"}
    assert await near(f"{here[0]}|{here[1]}") == {"tiananmen", "station", "north"}  # 10 km
    # Across the antimeridian: 179.9 E is 50 km from Suva's longitude line... and beyond.
    assert await near("-18.1416|-179.9|200|km") == {"suva"}
    assert await near("-18.1416|-179.9|100|km") == set()


async def test_text_and_content_in_chinese(client: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:12]
    narrative = f'<div xmlns="{XHTML}"><p>诊断：<b>原发性高血压</b> {tag}</p></div>'
    hypertension = await create(
        client,
        {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/x"},
            "text": {"status": "generated", "div": narrative},
            "code": {"text": "原发性高血压"},
        },
    )
    diabetes = await create(
        client,
        {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/x"},
            "code": {"text": f"2型糖尿病 {tag}"},
            "note": [{"text": "Dr. Ébert: 血压正常"}],
        },
    )
    assert await ids(client, "Condition", _text=f"高血压 {tag}") == {hypertension}
    assert await ids(client, "Condition", _text=f"糖尿病 {tag}") == set()  # not in a narrative
    assert await ids(client, "Condition", _content=f"糖尿病 {tag}") == {diabetes}
    assert await ids(client, "Condition", _content=f"血压 {tag}") == {hypertension, diabetes}
    assert await ids(client, "Condition", _content=f"EBERT {tag}") == {diabetes}
    assert await ids(client, "Condition", _content=f"<b> {tag}") == set()  # tags are not text
    assert await ids(client, "Condition", _content=f"高血压,糖尿病 {tag}") == {
        hypertension,
        diabetes,
    }


@pytest.mark.parametrize(
    ("type_", "params", "fragment"),
    [
        ("Observation", {"code-value-quantity": "http://loinc.org|8480-6"}, "'$'-separated"),
        ("Observation", {"code-value-quantity": "a$b$c"}, "'$'-separated"),
        ("Observation", {"value-quantity": f"5|{UCUM}|mmol/LL"}, "not a valid UCUM unit"),
        ("Location", {"near": "39.9"}, "latitude|longitude"),
        ("Location", {"near": "39.9|116.4|5|kg"}, "unit of length"),
        ("Patient", {"gender:in": "http://example.org/ValueSet/nope"}, "cannot be expanded"),
        ("Observation", {"code:below": f"{LOINC}|8480-6"}, "not supported"),
    ],
)
async def test_bad_inputs_are_400(
    client: httpx.AsyncClient, type_: str, params: dict[str, str], fragment: str
) -> None:
    response = await client.get(type_, params=params)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert fragment in outcome["issue"][0]["diagnostics"]


async def test_capability_statement_lists_the_new_kinds(client: httpx.AsyncClient) -> None:
    statement = (await client.get("metadata")).json()
    params = {
        r["type"]: {p["name"]: p["type"] for p in r["searchParam"]}
        for r in statement["rest"][0]["resource"]
    }
    assert params["Observation"]["code-value-quantity"] == "composite"
    assert params["Observation"]["combo-code-value-quantity"] == "composite"
    assert params["Location"]["near"] == "special"
    assert params["Patient"]["_text"] == params["Patient"]["_content"] == "string"
    assert "_content" in params["Binary"] and "_text" not in params["Binary"]
