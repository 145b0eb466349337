"""The synthetic county: determinism, FHIR validity, identity numbers, statistics, loading."""

from __future__ import annotations

import os
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartmed.demo import idcard
from smartmed.demo.generator import (
    COUNTY,
    ORG_SYSTEM,
    PRACTITIONER_SYSTEM,
    RESIDENT_ID_SYSTEM,
    generate_county,
)

IN_CI = os.environ.get("CI", "").lower() == "true"
Bundle = dict[str, Any]


def _definitions() -> Path:
    """The FHIR definitions folder; skip without ``npm ci`` (fail in CI)."""
    from smartmed.fhir.definitions.locate import DefinitionsNotFound, locate_definitions

    try:
        return locate_definitions(None)
    except DefinitionsNotFound as exc:
        if IN_CI:
            pytest.fail(f"required in CI: {exc}")
        pytest.skip(f"FHIR definitions (node_modules) not installed: {exc}")


def _resources(bundles: list[Bundle], kind: str | None = None) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for b in bundles
        for e in b["entry"]
        if kind is None or e["resource"]["resourceType"] == kind
    ]


@pytest.fixture(scope="module")
def county_5000() -> list[Bundle]:
    return list(generate_county(residents=5000, seed=2020))


# -- identity numbers ------------------------------------------------------------------


def test_check_character_matches_the_standard_example() -> None:
    # GB 11643-1999 worked example: a woman (002 even) born 1949-12-31 in Beijing 110105.
    assert idcard.check_char("11010519491231002") == "X"
    assert idcard.is_valid("11010519491231002X")
    assert not idcard.is_valid("110105194912310021")
    assert idcard.birth_of("11010519491231002X") == date(1949, 12, 31)
    assert not idcard.is_male("11010519491231002X")
    assert idcard.make_id_number("110105", date(1949, 12, 31), 2) == "11010519491231002X"


def test_identity_numbers_agree_with_patient() -> None:
    bundles = list(generate_county(residents=600, seed=5))
    seen: set[str] = set()
    for patient in _resources(bundles, "Patient"):
        (ident,) = [i for i in patient["identifier"] if i["system"] == RESIDENT_ID_SYSTEM]
        number = ident["value"]
        assert len(number) == 18
        assert idcard.is_valid(number), number
        assert number[:6] == COUNTY.region_code
        assert idcard.birth_of(number).isoformat() == patient["birthDate"]
        assert idcard.is_male(number) == (patient["gender"] == "male")
        assert number not in seen
        seen.add(number)
    assert len(seen) == 600


# -- determinism ------------------------------------------------------------------------


def test_same_seed_gives_identical_bundles() -> None:
    first = [orjson.dumps(b) for b in generate_county(residents=150, seed=7)]
    second = [orjson.dumps(b) for b in generate_county(residents=150, seed=7)]
    assert first == second
    other = [orjson.dumps(b) for b in generate_county(residents=150, seed=8)]
    assert other != first


def test_bundle_shape_and_references(county_5000: list[Bundle]) -> None:
    """urn:uuid references stay inside their Bundle; conditional ones hit the first Bundle."""
    identifiers = {
        f"{r['resourceType']}?identifier={i['system']}|{i['value']}"
        for r in _resources(county_5000[:1])
        for i in r.get("identifier", [])
    }

    def references(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["reference"]] if isinstance(node.get("reference"), str) else []
            return found + [r for v in node.values() for r in references(v)]
        if isinstance(node, list):
            return [r for v in node for r in references(v)]
        return []

    for bundle in county_5000:
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        urls = {e["fullUrl"] for e in bundle["entry"]}
        assert len(urls) == len(bundle["entry"])
        for entry in bundle["entry"]:
            assert entry["fullUrl"].startswith("urn:uuid:")
            assert entry["request"]["method"] == "POST"
            assert entry["request"]["url"] == entry["resource"]["resourceType"]
            for ref in references(entry["resource"]):
                assert ref in urls or ref in identifiers, ref


# -- validity ---------------------------------------------------------------------------


def test_every_resource_is_valid_fhir() -> None:
    from smartmed.fhir.validate import get_validator

    validator = get_validator(_definitions())
    bundles = list(generate_county(residents=400, seed=11))
    problems = []
    for bundle in bundles:
        for entry in bundle["entry"]:
            for issue in validator.validate(entry["resource"], resource_type=None):
                if issue.severity in ("error", "fatal"):
                    problems.append((issue.expression, issue.diagnostics))
        problems += [
            (i.expression, i.diagnostics)
            for i in validator.validate(bundle, resource_type=None)
            if i.severity in ("error", "fatal")
        ]
    assert problems == []
    kinds = Counter(r["resourceType"] for r in _resources(bundles))
    for kind in (
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "CareTeam",
        "Patient",
        "RelatedPerson",
        "Condition",
        "Encounter",
        "Observation",
        "AllergyIntolerance",
        "MedicationRequest",
    ):
        assert kinds[kind] > 0, kind


# -- structure (the statistics of a 20k county are in test_statistics.py) --------------


def test_every_patient_is_managed_by_a_village_clinic(county_5000: list[Bundle]) -> None:
    clinics, doctors = set(), set()
    for resource in _resources(county_5000[:1]):
        (ident,) = resource["identifier"]
        if resource["resourceType"] == "Organization":
            kinds = {c["code"] for t in resource["type"] for c in t["coding"]}
            if "village-clinic" in kinds:
                clinics.add(ident["value"])
        elif resource["resourceType"] == "Practitioner":
            doctors.add(ident["value"])
    assert clinics
    for patient in _resources(county_5000, "Patient"):
        ref = patient["managingOrganization"]["reference"]
        system_value = ref.removeprefix("Organization?identifier=")
        assert system_value.split("|")[0] == ORG_SYSTEM
        assert system_value.split("|")[1] in clinics
        (gp,) = patient["generalPractitioner"]
        prefix = f"Practitioner?identifier={PRACTITIONER_SYSTEM}|"
        assert gp["reference"].startswith(prefix)
        assert gp["reference"].removeprefix(prefix) in doctors


def test_households_and_observations_stay_modest(county_5000: list[Bundle]) -> None:
    for bundle in county_5000[1:]:
        patients = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
        assert 1 <= len(patients) <= 5
        per_patient = Counter(
            e["resource"]["subject"]["reference"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Observation"
        )
        for patient in patients:
            assert 2 <= per_patient[patient["fullUrl"]] <= 11
    for observation in _resources(county_5000, "Observation"):
        if observation["code"]["coding"][0]["code"] == "85354-9":
            systolic = observation["component"][0]["valueQuantity"]["value"]
            diastolic = observation["component"][1]["valueQuantity"]["value"]
            assert 55 <= diastolic and diastolic + 20 <= systolic <= 190


def test_family_doctor_contracts(county_5000: list[Bundle]) -> None:
    """Contracts name a township team (the access policy's grant) and cover about the
    published share of residents (NHC 2017: > 35 % overall, > 65 % of key populations)."""
    from smartmed.demo.generator import CONTRACT_TEAM_EXTENSION

    patients = contracts = 0
    for bundle in county_5000[1:]:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Patient":
                patients += 1
            elif resource["resourceType"] == "Contract":
                # Earlier contracts (renewed, transferred, terminated: demo.contracting)
                # are history; the share counts the contracts in force on as_of.
                assert resource["status"] in ("executed", "terminated")
                (team,) = [e for e in resource["extension"] if e["url"] == CONTRACT_TEAM_EXTENSION]
                assert team["valueReference"]["reference"].startswith("CareTeam?identifier=")
                assert resource["applies"]["start"] < resource["applies"]["end"]
                if resource["status"] == "executed" and resource["applies"]["end"] >= "2026-11-01":
                    contracts += 1
    share = contracts / patients
    # Binomial bound for 5000 residents is ±2 %; the key-population mix adds some spread.
    assert 0.28 < share < 0.45, share
