"""Search index extraction: exact values per kind, and the fast evaluator vs fhirpathpy."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartmed.fhir.definitions.locate import DefinitionsNotFound, locate_definitions
from smartmed.fhir.search.extract import (
    IndexExtractor,
    date_range,
    decimal_range,
    get_extractor,
    normalize,
)
from smartmed.fhir.search.fhirpath_fast import compile_expression, compile_fhirpathpy
from smartmed.fhir.search.index import (
    CompositeValue,
    DateValue,
    GeoValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TextValue,
    TokenValue,
    UriValue,
)
from smartmed.fhir.search.params import SearchRegistry, get_registry, load_search_parameters

IN_CI = os.environ.get("CI", "").lower() == "true"
EXAMPLES = Path(__file__).resolve().parents[2] / "node_modules" / "hl7.fhir.r4.examples"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# (file, parameter) pairs where the fast path may legitimately differ from fhirpathpy.
KNOWN_DIFFERENCES: frozenset[tuple[str, str]] = frozenset()


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def folder() -> Path:
    try:
        return locate_definitions(None)
    except DefinitionsNotFound:
        _need(False, "FHIR definitions not installed: run `npm ci`")
        raise


@pytest.fixture(scope="module")
def registry(folder: Path) -> SearchRegistry:
    get_extractor(folder)  # prepares the registry: _text/_content, composite component kinds
    return get_registry(folder)


@pytest.fixture(scope="module")
def fast(folder: Path) -> IndexExtractor:
    return get_extractor(folder)


@pytest.fixture(scope="module")
def slow(registry: SearchRegistry) -> IndexExtractor:
    return IndexExtractor(registry, fast=False)


def day(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- registry ---------------------------------------------------------------------------


def test_registry_splits_unions_per_type(registry: SearchRegistry) -> None:
    patient = registry.get("Observation", "patient")
    assert patient is not None
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.targets == ("Patient", "Group")  # as R4's clinical-patient has it
    common = registry.params_for("Binary")
    assert {c: p.type for c, p in common.items()} == {
        "_id": "token",
        "_lastUpdated": "date",
        "_profile": "uri",
        "_security": "token",
        "_source": "uri",
        "_tag": "token",
        "_content": "string",
    }
    tag = registry.get("Patient", "_tag")
    assert tag is not None and tag.expression == "Patient.meta.tag"
    composite = registry.get("Observation", "code-value-quantity")
    assert composite is not None and composite.type == "composite"
    assert composite.components[1][1] == "value.as(Quantity)"
    assert registry.get("Patient", "nope") is None
    # R4 gives _text and _content no expression; search/support.py adds them.
    content = registry.get("Patient", "_content")
    assert content is not None and (content.type, content.expression) == ("string", None)
    assert registry.get("Binary", "_text") is None  # _text is on DomainResource only


SP = "http://hl7.org/fhir/SearchParameter/"
SD = "http://hl7.org/fhir/StructureDefinition/"
NO_BASE = "no base (SearchParameter.base is 1..*)"


def _undefined(extension: str) -> str:
    return f"the expression uses the extension {extension}, which R4 does not define"


# The package's SearchParameters that the registry leaves out, with the reason.
DROPPED: dict[str, str] = {
    **{
        f"{SP}{kind.lower()}-extensions-{kind}-{code}": NO_BASE
        for kind in ("CodeSystem", "ValueSet")
        for code in ("author", "effective", "end", "keyword", "workflow")
    },
    f"{SP}device-extensions-Device-din": _undefined(f"{SP}device-extensions-Device-din"),
    f"{SP}patient-extensions-Patient-mothersMaidenName": _undefined(
        f"{SD}patient-extensions-Patient-mothersMaidenName"
    ),
    **{
        f"{SP}observation-genetic-Observation-{code}": _undefined(f"{SD}{extension}")
        for code, extension in (
            ("amino-acid-change", "observation-geneticsAminoAcidChangeName"),
            ("gene-amino-acid-change", "observation-geneticsAminoAcidChangeName"),
            ("dna-variant", "observation-geneticsDnaVariant"),
            ("gene-dnavariant", "observation-geneticsDnaVariant"),
        )
    },
    f"{SP}questionnaireresponse-extensions-QuestionnaireResponse-item-subject": _undefined(
        f"{SD}questionnaireresponse-isSubject"
    ),
}


def test_package_search_parameters(folder: Path, registry: SearchRegistry) -> None:
    kept, dropped = load_search_parameters(folder)
    assert dropped == DROPPED
    # 1375 resource parameters plus gene-identifier, assessed-condition, Patient age and
    # birthOrderBoolean; the examples (SearchParameter/example...) and _filter are not
    # definitions of the specification.
    assert len(kept) == 1379
    urls = {sp["url"] for sp in kept}
    assert not {f"{SP}example", f"{SP}example-reference", f"{SP}filter"} & urls
    assert all(registry.definition(url) is None for url in DROPPED)
    # Medplum's additions to the R4 set are gone.
    assert registry.get("DetectedIssue", "status") is None
    assert registry.get("DeviceDefinition", "classification") is None
    assert registry.get("ServiceRequest", "order-detail") is None
    # XPath-only parameters are known but not searchable, like _content.
    assert registry.definition(f"{SP}patient-extensions-Patient-age") is not None
    assert registry.get("Patient", "age") is None
    # 2575 from the package, plus _content on all 146 types and _text on 143 of them.
    assert sum(len(registry.params_for(t)) for t in registry.resource_types) == 2575 + 289


def test_parameters_on_extensions(fast: IndexExtractor, slow: IndexExtractor) -> None:
    gene = {"coding": [{"system": "http://www.genenames.org", "code": "HGNC:3236"}]}
    observation = {
        "resourceType": "Observation",
        "extension": [
            {"url": f"{SD}observation-geneticsGene", "valueCodeableConcept": gene},
            {"url": "http://example.org/other", "valueString": "x"},
        ],
    }
    expected = [TokenValue("http://www.genenames.org", "HGNC:3236")]
    assert fast.extract(observation).values["gene-identifier"] == expected
    assert slow.extract(observation).values["gene-identifier"] == expected
    report = {
        "resourceType": "DiagnosticReport",
        "extension": [
            {
                "url": f"{SD}DiagnosticReport-geneticsAssessedCondition",
                "valueReference": {"reference": "Condition/c1"},
            }
        ],
    }
    values = fast.extract(report).values
    assert values["assessed-condition"] == [ReferenceValue("Condition", "c1")]
    assert values == slow.extract(report).values


# --- normalisation, dates and decimals ---------------------------------------------------


def test_normalize() -> None:
    assert normalize("Ébert-MÜLLER") == "ebert-muller"
    assert normalize("Straße") == "strasse"
    assert normalize("张三") == "张三"
    assert normalize("김철수") == "김철수"  # Hangul recomposed after NFKD
    assert normalize("ＡＢＣ１２") == "abc12"  # full-width forms
    assert normalize("ガ") == "ガ"  # kana voicing is not an accent


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2024", "2024-01-01T00:00:00", "2024-12-31T23:59:59.999999"),
        ("2024-02", "2024-02-01T00:00:00", "2024-02-29T23:59:59.999999"),
        ("2023-12", "2023-12-01T00:00:00", "2023-12-31T23:59:59.999999"),
        ("2024-03-05", "2024-03-05T00:00:00", "2024-03-05T23:59:59.999999"),
        ("2024-03-05T10:00:00+08:00", "2024-03-05T02:00:00", "2024-03-05T02:00:00.999999"),
        ("2024-03-05T10:00:00Z", "2024-03-05T10:00:00", "2024-03-05T10:00:00.999999"),
        ("2024-03-05T10:00:00", "2024-03-05T10:00:00", "2024-03-05T10:00:00.999999"),
        ("2024-03-05T23:30:00-05:00", "2024-03-06T04:30:00", "2024-03-06T04:30:00.999999"),
        ("2024-03-05T10:00:00.12Z", "2024-03-05T10:00:00.120000", "2024-03-05T10:00:00.129999"),
        ("2024-03-05T10:00+01:00", "2024-03-05T09:00:00", "2024-03-05T09:00:59.999999"),
        ("9999", "9999-01-01T00:00:00", "9999-12-31T23:59:59.999999"),
    ],
)
def test_date_range(text: str, low: str, high: str) -> None:
    assert date_range(text) == (day(low), day(high))


@pytest.mark.parametrize("text", ["2024-13-01", "2024-02-30", "abc", "24", "2024-1-1", ""])
def test_date_range_invalid(text: str) -> None:
    assert date_range(text) is None


def test_decimal_range() -> None:
    assert decimal_range(5.4) == (5.4, 5.35, 5.45)
    assert decimal_range(100) == (100.0, 99.5, 100.5)
    assert decimal_range(0.02) == (0.02, 0.015, 0.025)
    assert decimal_range("1e2") == (100.0, 50.0, 150.0)
    assert decimal_range("5.40") == (5.4, 5.395, 5.405)
    assert decimal_range(True) is None
    assert decimal_range("x") is None


# --- exact values per kind ---------------------------------------------------------------


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "lastUpdated": "2024-01-01T00:00:00Z",
        "profile": ["http://example.org/StructureDefinition/p"],
        "tag": [{"system": "http://example.org/tags", "code": "vip", "display": "VIP"}],
        "source": "http://example.org/source",
    },
    "identifier": [
        {"system": "urn:oid:1.2.156", "value": "110101", "type": {"text": "Résident ID"}},
        {"system": "urn:no-value"},
        {
            "system": "urn:oid:2.16.156.10011.1.2",
            "value": "11010119900307001X",
            "type": {
                "coding": [{"system": V2_0203, "code": "NI"}, {"system": V2_0203, "code": "NNCHN"}]
            },
        },
    ],
    "active": True,
    "name": [
        {"text": "张三"},
        {"family": "王", "given": ["小明"], "text": "王小明"},
        {"family": "Müller", "given": ["Élodie", "Anne"], "prefix": ["Dr"]},
    ],
    "telecom": [
        {"system": "phone", "value": "+86 10 1234", "use": "mobile"},
        {"system": "email", "value": "a@example.org"},
    ],
    "gender": "female",
    "birthDate": "1990-02",
    "address": [{"line": ["1 Chang'an Ave"], "city": "北京", "postalCode": "100000"}],
    "generalPractitioner": [
        {"reference": "Practitioner/d1/_history/2"},
        {"reference": "http://other.org/fhir/Organization/o9"},
        {"reference": "urn:uuid:7f0b3bd6-93c3-4d4b-9b4a-6a0d0a1b2c3d"},
        {"reference": "#contained"},
        {"identifier": {"value": "only-identifier"}},
    ],
    "communication": [{"language": {"text": "Mandarin"}}],
}


def test_patient_exact_values(fast: IndexExtractor) -> None:
    values = fast.extract(PATIENT).values
    assert "_id" not in values and "_lastUpdated" not in values
    assert values["_tag"] == [TokenValue("http://example.org/tags", "vip", "vip")]
    assert values["_profile"] == [UriValue("http://example.org/StructureDefinition/p")]
    assert values["_source"] == [UriValue("http://example.org/source")]
    resident = ("urn:oid:2.16.156.10011.1.2", "11010119900307001X", None)
    assert values["identifier"] == [
        TokenValue("urn:oid:1.2.156", "110101", "resident id"),
        TokenValue(*resident, V2_0203, "NI"),  # one value per type coding, for :of-type
        TokenValue(*resident, V2_0203, "NNCHN"),
    ]
    assert values["active"] == [TokenValue(None, "true")]
    assert values["deceased"] == [TokenValue(None, "false")]
    assert values["gender"] == [TokenValue(None, "female")]
    assert values["phone"] == [TokenValue(None, "+86 10 1234")]
    assert values["email"] == [TokenValue(None, "a@example.org")]
    assert values["telecom"] == [TokenValue(None, "+86 10 1234"), TokenValue(None, "a@example.org")]
    assert values["language"] == [TokenValue(None, None, "mandarin")]
    # Text-only 张三 is stored as written: a prefix search for 张 finds it.
    assert values["name"] == [
        StringValue("张三", "张三"),
        StringValue("王", "王"),
        StringValue("小明", "小明"),
        StringValue("王小明", "王小明"),  # the text, equal to the family+given join
        StringValue("Müller", "muller"),
        StringValue("Élodie", "elodie"),
        StringValue("Anne", "anne"),
        StringValue("Dr", "dr"),
    ]
    assert values["family"] == [StringValue("王", "王"), StringValue("Müller", "muller")]
    assert values["given"] == [
        StringValue("小明", "小明"),
        StringValue("Élodie", "elodie"),
        StringValue("Anne", "anne"),
    ]
    assert values["address"] == [
        StringValue("1 Chang'an Ave", "1 chang'an ave"),
        StringValue("北京", "北京"),
        StringValue("100000", "100000"),
    ]
    assert values["address-city"] == [StringValue("北京", "北京")]
    assert values["birthdate"] == [
        DateValue(day("1990-02-01T00:00:00"), day("1990-02-28T23:59:59.999999"))
    ]
    assert values["general-practitioner"] == [
        ReferenceValue("Practitioner", "d1"),
        ReferenceValue("Organization", "o9", "http://other.org/fhir/Organization/o9"),
        ReferenceValue(None, None, "urn:uuid:7f0b3bd6-93c3-4d4b-9b4a-6a0d0a1b2c3d"),
        ReferenceValue(None, None, None, None, "only-identifier"),  # for :identifier
    ]


def test_chinese_family_given_join(fast: IndexExtractor) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "王", "given": ["小明"]}]}
    assert fast.extract(patient).values["name"] == [
        StringValue("王", "王"),
        StringValue("小明", "小明"),
        StringValue("王小明", "王小明"),  # so that 王小 finds 王小明 by prefix
    ]
    mixed = {"resourceType": "Patient", "name": [{"family": "Wang", "given": ["小明"]}]}
    assert [v.value for v in fast.extract(mixed).values["name"]] == ["Wang", "小明"]  # type: ignore[union-attr]


def test_deceased_variants(fast: IndexExtractor) -> None:
    def deceased(extra: dict[str, Any]) -> Any:
        return fast.extract({"resourceType": "Patient", **extra}).values.get("deceased")

    assert deceased({"deceasedBoolean": True}) == [TokenValue(None, "true")]
    assert deceased({"deceasedBoolean": False}) == [TokenValue(None, "false")]
    assert deceased({"deceasedDateTime": "2020-01-01"}) == [TokenValue(None, "true")]
    values = fast.extract({"resourceType": "Patient", "deceasedDateTime": "2020"}).values
    assert values["death-date"] == [
        DateValue(day("2020-01-01T00:00:00"), day("2020-12-31T23:59:59.999999"))
    ]


KG_72_5 = QuantityValue(72.5, 72.45, 72.55, UCUM, "kg", "kg", 72500.0, 72450.0, 72550.0, "g")
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "category": [{"text": "Vital Signs"}],
    "code": {
        "coding": [
            {"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"},
            {"system": "http://snomed.info/sct", "code": "27113001"},
        ],
        "text": "Weight",
    },
    "subject": {"reference": "Patient/p1"},
    "effectivePeriod": {"start": "2024-03-05T10:00:00+08:00"},
    "issued": "2024-03-05T10:30:00.123Z",
    "performer": [{"reference": "Practitioner/d1"}],
    "valueQuantity": {"value": 72.50, "unit": "kg", "system": UCUM, "code": "kg"},
    "component": [
        {"code": {"text": "systolic"}, "valueQuantity": {"value": 120, "unit": "mmHg"}},
        {"code": {"text": "note"}, "valueString": "ok"},
    ],
}


def test_observation_exact_values(fast: IndexExtractor) -> None:
    values = fast.extract(OBSERVATION).values
    assert values["status"] == [TokenValue(None, "final")]
    assert values["category"] == [TokenValue(None, None, "vital signs")]
    assert values["code"] == [
        TokenValue("http://loinc.org", "29463-7", "weight"),
        TokenValue("http://snomed.info/sct", "27113001", "weight"),
        TokenValue(None, None, "body weight"),  # a display hidden by the text, for :text
    ]
    assert values["subject"] == [ReferenceValue("Patient", "p1")]
    assert values["patient"] == [ReferenceValue("Patient", "p1")]
    assert values["performer"] == [ReferenceValue("Practitioner", "d1")]
    assert values["date"] == [DateValue(day("2024-03-05T02:00:00"), datetime.max)]
    assert values["value-quantity"] == [KG_72_5]
    assert values["component-value-quantity"] == [
        QuantityValue(120.0, 119.5, 120.5, None, None, "mmHg")
    ]
    assert values["combo-value-quantity"] == [
        KG_72_5,
        QuantityValue(120.0, 119.5, 120.5, None, None, "mmHg"),
    ]
    assert values["component-code"] == [
        TokenValue(None, None, "systolic"),
        TokenValue(None, None, "note"),
    ]
    assert "value-string" not in values
    loinc = TokenValue("http://loinc.org", "29463-7", "weight")
    snomed = TokenValue("http://snomed.info/sct", "27113001", "weight")
    display = TokenValue(None, None, "body weight")
    assert values["code-value-quantity"] == [CompositeValue(((loinc, snomed, display), (KG_72_5,)))]
    # The component without a quantity value has no component-code-value-quantity.
    systolic = TokenValue(None, None, "systolic")
    mmhg = QuantityValue(120.0, 119.5, 120.5, None, None, "mmHg")  # no UCUM system: not canonical
    assert values["component-code-value-quantity"] == [CompositeValue(((systolic,), (mmhg,)))]
    assert values["combo-code-value-quantity"] == [
        CompositeValue(((loinc, snomed, display), (KG_72_5,))),
        CompositeValue(((systolic,), (mmhg,))),
    ]
    assert "code-value-concept" not in values
    group = {**OBSERVATION, "subject": {"reference": "Group/g1"}}
    group_values = fast.extract(group).values
    assert group_values["subject"] == [ReferenceValue("Group", "g1")]
    assert "patient" not in group_values


def test_period_and_timing_ranges(fast: IndexExtractor) -> None:
    obs = {"resourceType": "Observation", "effectivePeriod": {"end": "2024-03"}}
    assert fast.extract(obs).values["date"] == [
        DateValue(datetime.min, day("2024-03-31T23:59:59.999999"))
    ]
    obs = {"resourceType": "Observation", "effectiveInstant": "2024-03-05T10:00:00.5+01:00"}
    assert fast.extract(obs).values["date"] == [
        DateValue(day("2024-03-05T09:00:00.5"), day("2024-03-05T09:00:00.599999"))
    ]
    obs = {
        "resourceType": "Observation",
        "effectiveTiming": {"event": ["2024-03-05", "2024-01-02"]},
    }
    assert fast.extract(obs).values["date"] == [
        DateValue(day("2024-01-02T00:00:00"), day("2024-03-05T23:59:59.999999"))
    ]
    obs = {"resourceType": "Observation", "effectivePeriod": {}, "effectiveDateTime": "bad"}
    assert "date" not in fast.extract(obs).values


def test_quantity_money_range_and_number(fast: IndexExtractor) -> None:
    invoice = {"resourceType": "Invoice", "totalGross": {"value": 99.9, "currency": "CNY"}}
    assert fast.extract(invoice).values["totalgross"] == [
        QuantityValue(99.9, 99.85, 99.95, "urn:iso:std:iso:4217", "CNY", None)
    ]
    condition = {
        "resourceType": "Condition",
        "onsetAge": {"value": 52, "unit": "yr", "system": UCUM, "code": "a"},
    }
    year = 31_557_600.0  # the Julian year, UCUM's `a`, in seconds
    assert fast.extract(condition).values["onset-age"] == [
        QuantityValue(52.0, 51.5, 52.5, UCUM, "a", "yr", 52 * year, 51.5 * year, 52.5 * year, "s")
    ]
    condition = {"resourceType": "Condition", "onsetRange": {"low": {"value": 40, "code": "a"}}}
    assert fast.extract(condition).values["onset-age"] == [
        QuantityValue(40.0, 40.0, float("inf"), None, "a", None)
    ]
    risk = {"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.02}]}
    assert fast.extract(risk).values["probability"] == [NumberValue(0.02, 0.015, 0.025)]


def test_canonical_reference_and_uri(fast: IndexExtractor) -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/Questionnaire/q1|2.0",
    }
    assert fast.extract(response).values["questionnaire"] == [
        ReferenceValue("Questionnaire", "q1", "http://example.org/Questionnaire/q1|2.0")
    ]
    value_set = {"resourceType": "ValueSet", "url": "http://example.org/vs"}
    assert fast.extract(value_set).values["url"] == [UriValue("http://example.org/vs")]


def test_fast_path_covers_every_extracted_expression(registry: SearchRegistry) -> None:
    slow = []
    for resource_type in registry.resource_types:
        for param in registry.params_for(resource_type).values():
            if param.expression and param.type not in ("composite", "special"):
                if not compile_expression(param.expression)[1]:
                    slow.append(param.expression)
    assert slow == []


def test_fallback_to_fhirpathpy() -> None:
    evaluator, fast = compile_expression("Patient.name.first().family")
    assert not fast
    patient = {"resourceType": "Patient", "name": [{"family": "A"}, {"family": "B"}]}
    assert evaluator(patient) == [("A", "string")]


def test_malformed_resources_do_not_raise(
    fast: IndexExtractor, caplog: pytest.LogCaptureFixture
) -> None:
    weird: dict[str, Any] = {
        "resourceType": "Observation",
        "code": [1, 2],
        "subject": "Patient/1",
        "effectiveDateTime": 20240101,
        "valueQuantity": {"value": "NaN", "code": 5},
        "component": "x",
        "performer": [None, {"reference": 7}],
    }
    # Only the full text remains: every string of the resource.
    assert fast.extract(weird).values == {"_content": [TextValue("nan observation patient/1 x")]}
    assert fast.extract({"resourceType": "NoSuchType", "id": "x"}).values == {}
    assert fast.extract({"id": "no type"}).values == {}
    assert caplog.records == []


# --- fast vs fhirpathpy --------------------------------------------------------------------

_words = st.sampled_from(["Anne", "Élodie", "Müller", "王", "小明", "张", "Ōta", "de la Cruz"])
_dates = st.sampled_from(
    ["2024", "2024-02", "2024-02-29", "2024-03-05T10:00:00+08:00", "2024-03-05T10:00:00Z", "x"]
)
_refs = st.sampled_from(
    ["Patient/1", "Group/2", "Device/3", "Patient/1/_history/4", "urn:uuid:1", "#c", ""]
    + ["http://h/fhir/Patient/5", "http://h/fhir/Location/6", "Practitioner/7"]
)
_coding = st.fixed_dictionaries(
    {},
    optional={
        "system": st.sampled_from(["http://loinc.org", "urn:x"]),
        "code": st.sampled_from(["a", "b"]),
        "display": _words,
    },
)
_concept = st.fixed_dictionaries(
    {}, optional={"coding": st.lists(_coding, max_size=2), "text": _words}
)
_quantity = st.fixed_dictionaries(
    {},
    optional={
        "value": st.one_of(st.integers(-5, 500), st.floats(-1e6, 1e6, allow_nan=False)),
        "unit": st.just("mg"),
        "system": st.just(UCUM),
        "code": st.sampled_from(["mg", "kg"]),
    },
)
_period = st.fixed_dictionaries({}, optional={"start": _dates, "end": _dates})
_name = st.fixed_dictionaries(
    {},
    optional={
        "family": _words,
        "given": st.lists(_words, max_size=2),
        "text": _words,
        "prefix": st.lists(_words, max_size=1),
    },
)
_telecom = st.fixed_dictionaries(
    {"value": st.sampled_from(["123", "a@b.c"])},
    optional={"system": st.sampled_from(["phone", "email", "fax"])},
)
_identifier = st.fixed_dictionaries(
    {}, optional={"system": st.just("urn:x"), "value": _words, "type": _concept}
)


def _choice(prefix: str, options: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Either no ``prefix[x]`` element or one of its typed variants."""
    return st.one_of(
        st.just({}),
        *[st.dictionaries(st.just(prefix + k), s, min_size=1) for k, s in options.items()],
    )


patients = st.builds(
    lambda base, deceased: {"resourceType": "Patient", **base, **deceased},
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.lists(_name, max_size=3),
            "telecom": st.lists(_telecom, max_size=3),
            "identifier": st.lists(_identifier, max_size=2),
            "gender": st.sampled_from(["male", "female"]),
            "birthDate": _dates,
            "active": st.booleans(),
            "generalPractitioner": st.lists(_refs.map(lambda r: {"reference": r}), max_size=2),
            "address": st.lists(
                st.fixed_dictionaries({}, optional={"city": _words, "line": st.lists(_words)})
            ),
        },
    ),
    _choice("deceased", {"Boolean": st.booleans(), "DateTime": _dates}),
)
observations = st.builds(
    lambda base, value, effective: {"resourceType": "Observation", **base, **value, **effective},
    st.fixed_dictionaries(
        {},
        optional={
            "status": st.sampled_from(["final", "amended"]),
            "code": _concept,
            "category": st.lists(_concept, max_size=2),
            "subject": _refs.map(lambda r: {"reference": r}),
            "issued": _dates,
            "component": st.lists(
                st.builds(
                    lambda code, value: {"code": code, **value},
                    _concept,
                    _choice("value", {"Quantity": _quantity, "CodeableConcept": _concept}),
                ),
                max_size=2,
            ),
        },
    ),
    _choice(
        "value",
        {
            "Quantity": _quantity,
            "CodeableConcept": _concept,
            "String": _words,
            "Boolean": st.booleans(),
            "Integer": st.integers(-3, 3),
            "Period": _period,
            "DateTime": _dates,
            "Range": st.fixed_dictionaries({}, optional={"low": _quantity, "high": _quantity}),
        },
    ),
    _choice("effective", {"DateTime": _dates, "Period": _period, "Instant": _dates}),
)


def _valued(nodes: list[Any]) -> list[Any]:
    """Nodes minus empty elements, which fhirpathpy drops along with `_x` extensions."""
    return [n for n in nodes if not (type(n[0]) is dict and n[0].keys() <= {"id", "extension"})]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resource=st.one_of(patients, observations))
def test_fast_equals_fhirpathpy(
    resource: dict[str, Any], registry: SearchRegistry, fast: IndexExtractor, slow: IndexExtractor
) -> None:
    # The evaluators agree node by node (data and inferred type) for every parameter...
    for param in registry.params_for(resource["resourceType"]).values():
        if param.expression and param.type not in ("composite", "special"):
            fast_nodes = _valued(compile_expression(param.expression)[0](resource))
            slow_nodes = _valued(compile_fhirpathpy(param.expression)(resource))
            assert fast_nodes == slow_nodes, param.code
    # ... and so do the extracted indexes.
    assert fast.extract(resource).values == slow.extract(resource).values


def _examples() -> list[Path]:
    _need(EXAMPLES.is_dir(), f"R4 examples not installed at {EXAMPLES}: run `npm ci`")
    return [
        p for p in sorted(EXAMPLES.glob("*.json")) if p.name not in ("package.json", "ig-r4.json")
    ]


@pytest.mark.slow
def test_all_official_examples(
    fast: IndexExtractor, slow: IndexExtractor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="smartmed.fhir.search.extract")
    differences = []
    count = 0
    for path in _examples():
        resource = orjson.loads(path.read_bytes())
        expected = slow.extract(resource).values
        actual = fast.extract(resource).values
        count += len(actual)
        for code in set(expected) | set(actual):
            if (
                expected.get(code) != actual.get(code)
                and (path.name, code) not in KNOWN_DIFFERENCES
            ):
                differences.append((path.name, code))
    assert differences == []
    assert [r.getMessage() for r in caplog.records] == []  # no evaluation failed
    assert count > 50_000


def test_location_position_and_texts(fast: IndexExtractor) -> None:
    location = {
        "resourceType": "Location",
        "position": {"latitude": 0, "longitude": 90.0},
        "text": {"status": "generated", "div": "<div><b>县医院</b> &amp; Clinic</div>"},
    }
    values = fast.extract(location).values
    [near] = values["near"]
    assert isinstance(near, GeoValue) and (near.lat, near.lon) == (0.0, 90.0)
    assert (round(near.x, 12), round(near.y, 12), round(near.z, 12)) == (0.0, 1.0, 0.0)
    assert values["_text"] == [TextValue("县医院 & clinic")]
    assert values["_content"] == [TextValue("location 县医院 & clinic")]
    off_earth = {"resourceType": "Location", "position": {"latitude": 91, "longitude": 0}}
    assert "near" not in fast.extract(off_earth).values
