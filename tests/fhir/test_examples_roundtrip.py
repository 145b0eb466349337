"""The official FHIR R4 examples through the HTTP API, on SQLite and PostgreSQL.

Every example the validator accepts is stored with ``PUT Type/id`` and read back: the
content must be the same apart from ``meta``. Every example it rejects (the list, with
the reason for each, is in test_validate.py) must be refused with an OperationOutcome
and leave nothing behind.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson

from tests.conftest import EXAMPLES, need
from tests.fhir.test_validate import KNOWN_INVALID, NOT_EXAMPLES


def _examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name in NOT_EXAMPLES:
            continue
        body = orjson.loads(path.read_bytes())
        if isinstance(body, dict) and "resourceType" in body:
            found.append((path.name, body))
    return found


def _without_meta(body: dict[str, Any]) -> Any:
    return _numbers_as_decimals({k: v for k, v in body.items() if k != "meta"})


def _numbers_as_decimals(node: Any) -> Any:
    """JSON numbers compared by value: PostgreSQL JSONB prints -1E+245 as 246 digits."""
    if isinstance(node, dict):
        return {k: _numbers_as_decimals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbers_as_decimals(v) for v in node]
    if isinstance(node, int | float) and not isinstance(node, bool):
        return Decimal(repr(node))
    return node


async def test_official_examples_round_trip(client: httpx.AsyncClient) -> None:
    need(EXAMPLES.is_dir(), "the R4 examples are not installed (npm ci)")
    examples = _examples()
    assert len(examples) > 5000
    mismatches: list[str] = []
    accepted = rejected = 0
    for name, body in examples:
        type_, id_ = body["resourceType"], body.get("id")
        if name in KNOWN_INVALID:
            response = await client.post(type_, json=body)
            assert response.status_code == 400, name
            assert response.json()["resourceType"] == "OperationOutcome"
            if id_:
                assert (await client.get(f"{type_}/{id_}")).status_code in (404, 200), name
            rejected += 1
            continue
        if id_ is None:
            response = await client.post(type_, json=body)
            assert response.status_code == 201, (name, response.text)
            id_ = response.json()["id"]
            expected = {**body, "id": id_}
        else:
            response = await client.put(f"{type_}/{id_}", json=body)
            assert response.status_code in (200, 201), (name, response.text[:500])
            expected = body
        if type_ == "Subscription" and body.get("status") == "requested":
            # subscription.html#status: the server activates a requested subscription.
            expected = {**expected, "status": "active"}
        read = await client.get(f"{type_}/{id_}")
        assert read.status_code == 200, name
        if _without_meta(read.json()) != _without_meta(expected):
            mismatches.append(name)
        accepted += 1
    assert mismatches == []
    assert rejected == len(KNOWN_INVALID)
    assert accepted == len(examples) - len(KNOWN_INVALID)
