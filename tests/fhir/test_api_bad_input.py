"""Bad input never answers 500 and never leaves a partial write."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BODY_LIMIT


async def patient_total(client: httpx.AsyncClient) -> int:
    body = (await client.get("Patient", params={"_summary": "count"})).json()
    return int(body["total"])


def issue(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    first: dict[str, Any] = body["issue"][0]
    return first


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    before = await patient_total(client)
    response = await client.post("Patient", content=b'{"resourceType": "Patient", "name": [')
    assert response.status_code == 400
    assert "not valid JSON" in issue(response)["diagnostics"]
    assert await patient_total(client) == before


async def test_wrong_types_and_unknown_elements_name_their_location(
    client: httpx.AsyncClient,
) -> None:
    cases = [
        ({"resourceType": "Patient", "active": "yes"}, "Patient.active"),
        ({"resourceType": "Patient", "name": {"family": "王"}}, "Patient.name"),
        ({"resourceType": "Patient", "birthDate": "1990-13-40"}, "Patient.birthDate"),
        ({"resourceType": "Patient", "favouriteColour": "red"}, "Patient.favouriteColour"),
        ({"resourceType": "Observation", "code": {"text": "x"}}, "Observation.status"),
    ]
    for body, expression in cases:
        response = await client.post(body["resourceType"], json=body)
        assert response.status_code == 400, body
        assert expression in [e for i in response.json()["issue"] for e in i.get("expression", [])]


async def test_resource_type_in_body_must_match_url(client: httpx.AsyncClient) -> None:
    response = await client.post("Patient", json={"resourceType": "Observation"})
    assert response.status_code == 400
    assert issue(response)["expression"] == ["resourceType"]
    put = await client.put("Patient/abc", json={"resourceType": "Observation", "id": "abc"})
    assert put.status_code == 400


async def test_id_mismatch_and_missing_id_on_update(client: httpx.AsyncClient) -> None:
    mismatch = await client.put("Patient/abc", json={"resourceType": "Patient", "id": "xyz"})
    assert mismatch.status_code == 400
    assert "does not match" in issue(mismatch)["diagnostics"]
    missing = await client.put("Patient/abc", json={"resourceType": "Patient"})
    assert missing.status_code == 400
    assert (await client.get("Patient/abc")).status_code == 404
    assert (await client.get("Patient/xyz")).status_code == 404


async def test_deep_nesting_is_refused(client: httpx.AsyncClient) -> None:
    nested: dict[str, Any] = {"url": "http://x", "valueString": "leaf"}
    for _ in range(200):
        nested = {"url": "http://x", "extension": [nested]}
    response = await client.post("Patient", json={"resourceType": "Patient", "extension": [nested]})
    assert response.status_code == 400
    assert "nested deeper" in issue(response)["diagnostics"]


async def test_huge_body_is_413(client: httpx.AsyncClient) -> None:
    huge = {"resourceType": "Patient", "name": [{"text": "x" * (BODY_LIMIT + 1)}]}
    response = await client.post("Patient", json=huge)
    assert response.status_code == 413
    assert issue(response)["code"] == "too-costly"


async def test_formats_we_do_not_serve(client: httpx.AsyncClient) -> None:
    xml = await client.get("Patient", headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 406
    assert xml.json()["resourceType"] == "OperationOutcome"
    fmt = await client.get("metadata", params={"_format": "xml"})
    assert fmt.status_code == 406
    body = await client.post(
        "Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert body.status_code == 415


async def test_method_not_allowed_is_an_operation_outcome(client: httpx.AsyncClient) -> None:
    response = await client.patch("Patient", json=[])
    assert response.status_code == 405
    assert issue(response)["code"] == "not-supported"


async def test_bad_etag_and_version(client: httpx.AsyncClient) -> None:
    created = (await client.post("Patient", json={"resourceType": "Patient"})).json()
    response = await client.put(
        f"Patient/{created['id']}", json=created, headers={"If-Match": "nonsense"}
    )
    assert response.status_code == 400
    assert (await client.get(f"Patient/{created['id']}/_history/abc")).status_code == 404


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    extra=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "gender",
                "birthDate",
                "active",
                "telecom",
                "id",
                "meta",
                "foo",
                "_birthDate",
                "contained",
            ]
        ),
        json_values,
        max_size=3,
    )
)
async def test_random_bodies_never_500_and_rejections_store_nothing(
    client: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    marker = uuid.uuid4().hex
    body = {
        "resourceType": "Patient",
        **extra,
        "identifier": [{"system": "urn:test", "value": marker}],
    }
    response = await client.post("Patient", json=body)
    assert response.status_code in (201, 400), response.text
    found = (await client.get("Patient", params={"identifier": f"urn:test|{marker}"})).json()
    assert found["total"] == (1 if response.status_code == 201 else 0)


async def test_control_characters_are_refused_not_500(client: httpx.AsyncClient) -> None:
    before = await patient_total(client)
    body = {"resourceType": "Patient", "name": [{"family": "王\u0000"}]}
    response = await client.post("Patient", json=body)
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Patient.name[0].family"]
    assert await patient_total(client) == before
    search = await client.get("Patient", params={"name": "王\u0000"})
    assert search.status_code == 400


async def test_bad_search_queries_are_400(client: httpx.AsyncClient) -> None:
    for params in (
        {"birthdate": "2024-13-01"},
        {"birthdate": "xx2024"},
        {"_count": "-1"},
        {"_count": "ten"},
        {"general-practitioner.foo": "x"},
        {"gender:contains": "x"},
        {"_sort": "nonsense"},
    ):
        response = await client.get("Patient", params=params, headers={"Prefer": "handling=strict"})
        assert response.status_code == 400, (params, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
