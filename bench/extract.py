"""Benchmark search index extraction: fast evaluator vs fhirpathpy only.

Run: ``.venv/bin/python bench/extract.py [--repeat N]``. Prints µs per resource over all
official R4 examples (``node_modules/hl7.fhir.r4.examples``) and over the Patient and
Observation examples alone, for both extractors, and their ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.fhir.search.extract import IndexExtractor
from smartmed.fhir.search.params import get_registry

EXAMPLES = Path(__file__).resolve().parents[1] / "node_modules" / "hl7.fhir.r4.examples"


def load_examples() -> list[dict[str, Any]]:
    """All example resources (package metadata skipped)."""
    out = []
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name in ("package.json", "ig-r4.json"):
            continue
        resource = orjson.loads(path.read_bytes())
        if isinstance(resource, dict) and "resourceType" in resource:
            out.append(resource)
    return out


def per_resource_us(
    extractor: IndexExtractor, resources: list[dict[str, Any]], repeat: int
) -> float:
    """Best-of-``repeat`` mean extraction time in µs per resource (plans warmed first)."""
    for resource in resources:
        extractor.extract(resource)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for resource in resources:
            extractor.extract(resource)
        best = min(best, time.perf_counter() - start)
    return best / len(resources) * 1e6


def main() -> None:
    """Print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    registry = get_registry(locate_definitions(None))
    fast = IndexExtractor(registry)
    slow = IndexExtractor(registry, fast=False)
    examples = load_examples()
    sets = {
        "all examples": examples,
        "Patient": [r for r in examples if r["resourceType"] == "Patient"],
        "Observation": [r for r in examples if r["resourceType"] == "Observation"],
    }
    print(f"{'set':<14}{'n':>6}{'fast µs':>10}{'fhirpathpy µs':>15}{'ratio':>8}")
    for name, resources in sets.items():
        fast_us = per_resource_us(fast, resources, args.repeat)
        slow_us = per_resource_us(slow, resources, max(1, args.repeat // 3))
        ratio = slow_us / fast_us
        print(f"{name:<14}{len(resources):>6}{fast_us:>10.1f}{slow_us:>15.1f}{ratio:>7.1f}x")


if __name__ == "__main__":
    main()
