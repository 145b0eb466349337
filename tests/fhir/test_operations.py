"""The $operation registry: levels, typed Parameters in, resources out, clear errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from smartmed.fhir.operations import Operation, OperationCall, OperationParam, OperationResult


async def _echo(call: OperationCall) -> OperationResult:
    parameters: list[dict[str, Any]] = [
        {"name": "level", "valueCode": call.level},
        {"name": "target", "valueString": f"{call.resource_type}/{call.resource_id}"},
        {"name": "count", "valueInteger": call.inputs["count"]},
    ]
    for tag in call.inputs["tag"]:
        parameters.append({"name": "tag", "valueString": tag})
    return OperationResult({"resourceType": "Parameters", "parameter": parameters})


@pytest.fixture(scope="module", autouse=True)
def echo_operation(app: FastAPI) -> None:
    registry = app.state.fhir.operations
    if "test-echo" not in registry.operations:
        registry.register(
            Operation(
                name="test-echo",
                levels=frozenset({"system", "type", "instance"}),
                handler=_echo,
                inputs=(
                    OperationParam("count", "integer", 1, "1"),
                    OperationParam("tag", "string", 0, "*"),
                    OperationParam("subject", "Patient", 0, "1"),
                ),
                resource_types=frozenset({"Patient"}),
            )
        )


def values(body: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in body["parameter"]:
        out.setdefault(p["name"], []).append(next(v for k, v in p.items() if k.startswith("value")))
    return out


async def test_each_level_with_parameters_body(client: httpx.AsyncClient) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "count", "valueInteger": 3},
            {"name": "tag", "valueString": "a"},
            {"name": "tag", "valueString": "b"},
        ],
    }
    system = await client.post("$test-echo", json=body)
    assert system.status_code == 200, system.text
    assert values(system.json()) == {
        "level": ["system"],
        "target": ["None/None"],
        "count": [3],
        "tag": ["a", "b"],
    }
    typed = await client.post("Patient/$test-echo", json=body)
    assert values(typed.json())["level"] == ["type"]
    created = (await client.post("Patient", json={"resourceType": "Patient"})).json()
    instance = await client.post(f"Patient/{created['id']}/$test-echo", json=body)
    assert values(instance.json())["target"] == [f"Patient/{created['id']}"]


async def test_get_with_primitive_parameters(client: httpx.AsyncClient) -> None:
    response = await client.get("Patient/$test-echo", params=[("count", "7"), ("tag", "x")])
    assert response.status_code == 200
    assert values(response.json())["count"] == [7]


async def test_bad_calls_are_clear_400s_and_404s(client: httpx.AsyncClient) -> None:
    missing = await client.post("$test-echo", json={"resourceType": "Parameters"})
    assert missing.status_code == 400
    assert missing.json()["issue"][0]["diagnostics"] == "$test-echo requires parameter 'count'"
    wrong_type = await client.post(
        "$test-echo",
        json={"resourceType": "Parameters", "parameter": [{"name": "count", "valueString": "3"}]},
    )
    assert wrong_type.status_code == 400
    unknown = await client.post(
        "$test-echo",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "count", "valueInteger": 1},
                {"name": "colour", "valueString": "red"},
            ],
        },
    )
    assert unknown.status_code == 400
    assert unknown.json()["issue"][0]["expression"] == ["Parameters.parameter[1]"]
    twice = await client.get("Patient/$test-echo", params=[("count", "1"), ("count", "2")])
    assert twice.status_code == 400
    not_int = await client.get("Patient/$test-echo", params={"count": "many"})
    assert not_int.status_code == 400
    resource_in_url = await client.get("Patient/$test-echo", params={"count": "1", "subject": "x"})
    assert resource_in_url.status_code == 400
    wrong_resource = await client.post(
        "$test-echo",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "count", "valueInteger": 1},
                {"name": "subject", "resource": {"resourceType": "Group"}},
            ],
        },
    )
    assert wrong_resource.status_code == 400
    other_type = await client.post("Observation/$test-echo", json={"resourceType": "Parameters"})
    assert other_type.status_code == 404
    missing_target = await client.get("Patient/nobody/$test-echo", params={"count": "1"})
    assert missing_target.status_code == 404
