"""The demo county loaded through the engine: no ID number or personal phone readable in
the raw store, and every resident still found by ID number."""

from __future__ import annotations

from typing import Any

from smartmed.crypto.policy import is_id_number
from smartmed.demo.generator import RESIDENT_ID_SYSTEM, generate_county
from smartmed.demo.load import load_demo
from tests.crypto.conftest import leaks, raw_rows, running, settings_for

PERSONS = ("Patient", "RelatedPerson", "Practitioner", "PractitionerRole")


def _secrets(bundles: list[dict[str, Any]]) -> tuple[dict[str, str], set[str]]:
    """Resident ID numbers (by Patient full URL) and personal phones of the county."""
    numbers: dict[str, str] = {}
    phones: set[str] = set()
    for bundle in bundles:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] not in PERSONS:
                continue
            for ident in resource.get("identifier", []):
                if ident.get("system") == RESIDENT_ID_SYSTEM:
                    numbers[ident["value"]] = resource["resourceType"]
            for holder in [resource, *resource.get("contact", [])]:
                for point in holder.get("telecom", []):
                    if point.get("system") in ("phone", "sms"):
                        phones.add(point["value"])
    return numbers, phones


async def test_demo_county_is_sealed_and_searchable(fresh_url: str) -> None:
    settings = settings_for(fresh_url)
    bundles = list(generate_county(residents=24, seed=5))
    numbers, phones = _secrets(bundles)
    assert len(numbers) == 24 and all(is_id_number(n) for n in numbers)
    assert len(phones) >= 10
    # when: the demo loader loads the county
    summary = await load_demo(settings, residents=24, seed=5, if_empty=False)
    assert "24 residents" in summary
    # then: not one of the numbers or phones is in the store's tables
    rows = await raw_rows(fresh_url)
    assert leaks(rows, sorted(numbers) + sorted(phones)) == []
    # and every resident is found by ID number, with the number given back exactly
    async with running(settings) as (_app, client):
        for number in sorted(numbers)[:8]:
            response = await client.get(
                "Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{number}"}
            )
            assert response.status_code == 200, response.text
            entries = response.json()["entry"]
            assert len(entries) == 1
            values = [i["value"] for i in entries[0]["resource"]["identifier"]]
            assert number in values
