"""The extractor's shortcuts give exactly the values of the plain evaluation.

Oracle: every search parameter evaluated by fhirpathpy (``IndexExtractor(fast=False)``)
against the fast extractor, with and without the conversions shared across resources
(``plain=True``, the bulk path's workers), on the demo county's resources and on random
ones; and the first steps shared within one extraction do not outlive it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartmed.demo.generator import generate_county
from smartmed.fhir.definitions.locate import DefinitionsNotFound, locate_definitions
from smartmed.fhir.search.extract import IndexExtractor, get_extractor
from smartmed.fhir.search.fhirpath_fast import compile_expression, shared_steps
from smartmed.fhir.search.index import QuantityValue, TokenValue
from smartmed.fhir.search.params import get_registry
from tests.conftest import need
from tests.fhir.test_search_extract import observations, patients


@pytest.fixture(scope="module")
def folder() -> Path:
    try:
        return locate_definitions(None)
    except DefinitionsNotFound:
        need(False, "FHIR definitions not installed: run `npm ci`")  # fails in CI
        raise


@pytest.fixture(scope="module")
def fast(folder: Path) -> IndexExtractor:
    return get_extractor(folder)


@pytest.fixture(scope="module")
def slow(folder: Path) -> IndexExtractor:
    get_extractor(folder)  # prepares the registry
    return IndexExtractor(get_registry(folder), fast=False)


def _county_resources() -> list[dict[str, Any]]:
    """The resources of a small demo county, stamped roughly as the engine stores them."""
    found = []
    for number, bundle in enumerate(generate_county(residents=40, seed=5)):
        for position, entry in enumerate(bundle["entry"]):
            body = dict(entry["resource"])
            body["id"] = f"r{number}-{position}"
            body["meta"] = {"versionId": "1", "lastUpdated": "2026-11-22T06:00:00.000000Z"}
            found.append(body)
    return found


def _plain(resource: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(resource))
    return decoded


def test_demo_resources_equal_fhirpathpy(fast: IndexExtractor, slow: IndexExtractor) -> None:
    resources = _county_resources()
    assert len(resources) > 300
    values = 0
    for resource in resources:
        expected = slow.extract(resource).values
        assert fast.extract(resource).values == expected, resource["resourceType"]
        values += sum(len(v) for v in expected.values())
    # Twice with the shared conversions: the second pass takes them all from the cache.
    for _ in range(2):
        for resource in resources:
            expected = slow.extract(resource).values
            assert fast.extract(_plain(resource), plain=True).values == expected
    assert values > 5_000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resource=st.one_of(patients, observations))
def test_random_resources_shared_conversions(
    resource: dict[str, Any], fast: IndexExtractor, slow: IndexExtractor
) -> None:
    expected = slow.extract(resource).values
    assert fast.extract(resource, plain=True).values == expected
    assert fast.extract(resource, plain=True).values == expected  # from the cache


def test_cache_keys_keep_apart_what_compares_equal(fast: IndexExtractor) -> None:
    def quantity(value: float) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "g"},
        }

    for value in (0.0, -0.0, 1, 1.0, 1.5):
        [found] = fast.extract(quantity(value), plain=True).values["value-quantity"]
        assert isinstance(found, QuantityValue)
        assert repr(found.value) == repr(float(value))
        assert found == fast.extract(quantity(value)).values["value-quantity"][0]
    # A boolean and an integer are equal dictionary keys; their tokens are not.
    alive = {"resourceType": "Patient", "active": True}
    assert fast.extract(alive, plain=True).values["active"] == [TokenValue(None, "true")]


def test_not_plain_resources_bypass_the_cache(fast: IndexExtractor, slow: IndexExtractor) -> None:
    coding = {"system": "urn:s", "code": "c", "display": "D"}
    plain = {"resourceType": "Observation", "code": {"coding": [coding]}}
    fast.extract(plain, plain=True)
    odd = {"resourceType": "Observation", "code": {"coding": (coding,)}}  # a tuple
    assert fast.extract(odd).values == slow.extract(odd).values


def test_shared_steps_do_not_outlive_one_extraction(
    fast: IndexExtractor, slow: IndexExtractor
) -> None:
    patient: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "Wang"}]}
    first = fast.extract(patient, plain=True).values
    patient["name"][0]["family"] = "Li"  # the same objects, changed between extractions
    patient["address"] = [{"city": "Anping"}]
    second = fast.extract(patient, plain=True).values
    assert first != second
    assert second == slow.extract(copy.deepcopy(patient)).values
    # Outside an extraction nothing is remembered; inside a block equal steps are shared.
    evaluate = compile_expression("Patient.name.family")[0]
    assert evaluate(patient) == [("Li", "string")]
    patient["name"][0]["family"] = "Zhao"
    assert evaluate(patient) == [("Zhao", "string")]
    with shared_steps():
        names = compile_expression("Patient.name")[0](patient)
        assert compile_expression("Patient.name.given | Patient.name")[0](patient) == names
