"""Benchmark the structural validator against ``orjson.loads`` of the same resources.

Run: ``.venv/bin/python bench/validate.py [--repeat N]``. Prints the time to load and
compile the definitions, then µs per resource (best of N rounds) to validate a typical
~30-element Patient, the official Patient and Observation examples, and all official
R4 examples (``node_modules/hl7.fhir.r4.examples``), each beside ``orjson.loads``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.fhir.validate import Validator

EXAMPLES = Path(__file__).resolve().parents[1] / "node_modules" / "hl7.fhir.r4.examples"
TYPICAL_PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.678Z"},
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "active": True,
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [
        {
            "use": "home",
            "line": ["534 Erewhon St"],
            "city": "PleasantVille",
            "postalCode": "3999",
        }
    ],
    "managingOrganization": {"reference": "Organization/1"},
}


def per_call_us(func: Callable[[], object], calls: int, repeat: int) -> float:
    """Best-of-``repeat`` mean time of ``calls`` calls, in µs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            func()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main() -> None:
    """Print load time and per-resource figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    validator = Validator(locate_definitions(None))
    print(f"load + compile definitions: {time.perf_counter() - start:.2f} s")

    raws = {
        "typical Patient (~30 elements)": [orjson.dumps(TYPICAL_PATIENT)],
        "Patient-example.json": [(EXAMPLES / "Patient-example.json").read_bytes()],
        "Observation-example.json": [(EXAMPLES / "Observation-example.json").read_bytes()],
        "all examples": [
            p.read_bytes()
            for p in sorted(EXAMPLES.glob("*.json"))
            if p.name not in ("package.json", "ig-r4.json")
        ],
    }
    print(f"{'':34} {'validate µs':>12} {'orjson.loads µs':>16} {'ratio':>6}")
    for label, blobs in raws.items():
        resources = [orjson.loads(b) for b in blobs]
        calls = max(1, 3000 // len(blobs))

        def validate_all(resources: list[dict[str, object]] = resources) -> None:
            for resource in resources:
                validator.validate(resource)

        def parse_all(blobs: list[bytes] = blobs) -> None:
            for blob in blobs:
                orjson.loads(blob)

        check = per_call_us(validate_all, calls, args.repeat) / len(blobs)
        parse = per_call_us(parse_all, calls, args.repeat) / len(blobs)
        print(f"{label:34} {check:12.1f} {parse:16.1f} {check / parse:6.1f}")


if __name__ == "__main__":
    main()
