"""Search request parsing: values per type, OR/AND, escapes, prefixes, chains and errors."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from smartmed.fhir.definitions.locate import DefinitionsNotFound, locate_definitions
from smartmed.fhir.search.extract import get_extractor
from smartmed.fhir.search.params import SearchRegistry, get_registry
from smartmed.fhir.search.query import (
    CompositeQuery,
    DateQuery,
    NearQuery,
    NumberQuery,
    OfTypeQuery,
    ParsedParam,
    QuantityQuery,
    ReferenceQuery,
    SearchError,
    SearchRequest,
    SearchTerm,
    TokenQuery,
    ValueSetQuery,
    parse_search,
    split_escaped,
    unescape,
)

IN_CI = os.environ.get("CI", "").lower() == "true"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def registry() -> SearchRegistry:
    try:
        folder: Path = locate_definitions(None)
    except DefinitionsNotFound:
        if IN_CI:
            pytest.fail("required in CI: FHIR definitions (run `npm ci`)")
        pytest.skip("FHIR definitions not installed: run `npm ci`")
    get_extractor(folder)  # prepares the registry: _text/_content, composite component kinds
    return get_registry(folder)


def parse(
    registry: SearchRegistry,
    resource_type: str,
    *items: tuple[str, str],
    strict: bool = True,
) -> SearchRequest:
    return parse_search(
        resource_type, list(items), registry, strict=strict, default_count=20, max_count=100
    )


def one(registry: SearchRegistry, resource_type: str, key: str, value: str) -> ParsedParam:
    request = parse(registry, resource_type, (key, value))
    assert len(request.params) == 1
    return request.params[0]


def error(registry: SearchRegistry, resource_type: str, *items: tuple[str, str]) -> SearchError:
    with pytest.raises(SearchError) as caught:
        parse(registry, resource_type, *items)
    return caught.value


def day(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- escapes -------------------------------------------------------------------------------


def test_split_and_unescape() -> None:
    assert split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert split_escaped(r"a\\,b", ",") == [r"a\\", "b"]
    assert unescape(r"a\,b\$c\|d\\e") == r"a,b$c|d\e"


# --- values per type ---------------------------------------------------------------------


def test_string_or_and_escape(registry: SearchRegistry) -> None:
    request = parse(registry, "Patient", ("name", "Élodie,王小"), ("name", r"a\,b"))
    first, second = request.params
    assert first.code == "name" and first.modifier is None and first.param.type == "string"
    assert [t.value for t in first.values] == ["elodie", "王小"]
    assert second.values == (SearchTerm("eq", r"a\,b", "a,b"),)
    exact = one(registry, "Patient", "name:exact", "Élodie")
    assert exact.modifier == "exact" and exact.values[0].value == "Élodie"
    contains = one(registry, "Patient", "family:contains", "MÜL")
    assert contains.values[0].value == "mul"


def test_token_forms(registry: SearchRegistry) -> None:
    values = one(
        registry, "Observation", "code", r"http://loinc.org|1234,|5678,http://loinc.org|,9999"
    ).values
    assert [t.value for t in values] == [
        TokenQuery("http://loinc.org", "1234", True),
        TokenQuery(None, "5678", True),
        TokenQuery("http://loinc.org", None, True),
        TokenQuery(None, "9999", False),
    ]
    escaped = one(registry, "Patient", "identifier", r"urn:x|a\|b\,c")
    assert escaped.values[0].value == TokenQuery("urn:x", "a|b,c", True)
    text = one(registry, "Observation", "code:text", "Body Wéight")
    assert text.values[0].value == "body weight"
    of_type = one(registry, "Patient", "identifier:of-type", "http://t.org|MR|123")
    assert of_type.values[0].value == OfTypeQuery("http://t.org", "MR", "123")
    gender = "http://hl7.org/fhir/administrative-gender"
    in_vs = one(
        registry, "Patient", "gender:in", "http://hl7.org/fhir/ValueSet/administrative-gender"
    )
    assert in_vs.values[0].value == ValueSetQuery(
        "http://hl7.org/fhir/ValueSet/administrative-gender",
        frozenset((gender, c) for c in ("male", "female", "other", "unknown")),
    )
    negated = one(registry, "Patient", "gender:not", "male")
    assert negated.modifier == "not" and negated.values[0].value == TokenQuery(None, "male", False)


def test_date_prefixes_and_precision(registry: SearchRegistry) -> None:
    values = one(registry, "Patient", "birthdate", "ge2024-02,lt2024-03-05T10:00:00+08:00").values
    assert values[0] == SearchTerm(
        "ge", "ge2024-02", DateQuery(day("2024-02-01"), day("2024-02-29T23:59:59.999999"))
    )
    assert values[1].prefix == "lt"
    assert values[1].value == DateQuery(day("2024-03-05T02:00"), day("2024-03-05T02:00:00.999999"))
    # An unencoded `+` arrives as a space.
    spaced = one(registry, "Patient", "birthdate", "2024-03-05T10:00:00 08:00")
    assert spaced.values[0].value == values[1].value
    assert one(registry, "Patient", "birthdate", "2024").values[0] == SearchTerm(
        "eq", "2024", DateQuery(day("2024-01-01"), day("2024-12-31T23:59:59.999999"))
    )


def test_number_and_quantity(registry: SearchRegistry) -> None:
    values = one(registry, "RiskAssessment", "probability", "0.8,gt100,1e2").values
    assert [(t.prefix, t.value) for t in values] == [
        ("eq", NumberQuery(0.8, 0.75, 0.85)),
        ("gt", NumberQuery(100.0, 99.5, 100.5)),
        ("eq", NumberQuery(100.0, 50.0, 150.0)),
    ]
    values = one(registry, "Observation", "value-quantity", f"le5.4|{UCUM}|mg,5.4||mg,ap-3").values
    assert [(t.prefix, t.value) for t in values] == [
        ("le", QuantityQuery(5.4, 5.35, 5.45, UCUM, "mg", (0.0054, 0.00535, 0.00545, "g"))),
        ("eq", QuantityQuery(5.4, 5.35, 5.45, None, "mg")),
        ("ap", QuantityQuery(-3.0, -3.5, -2.5, None, None)),
    ]
    # A special unit keeps no canonical form: it matches by its code only.
    celsius = one(registry, "Observation", "value-quantity", f"37|{UCUM}|Cel").values[0]
    assert celsius.value == QuantityQuery(37.0, 36.5, 37.5, UCUM, "Cel")


def test_composite_near_and_text(registry: SearchRegistry) -> None:
    key = "code-value-quantity"
    term = one(registry, "Observation", key, f"http://loinc.org|8480-6$gt140|{UCUM}|mm[Hg]")
    value = term.values[0].value
    assert isinstance(value, CompositeQuery)
    code, quantity = value.terms
    assert code.value == TokenQuery("http://loinc.org", "8480-6", True)
    assert quantity.prefix == "gt"
    assert isinstance(quantity.value, QuantityQuery) and quantity.value.canon is not None
    assert quantity.value.canon[3] == "g.m-1.s-2"
    escaped = one(registry, "Observation", "code-value-string", r"a\$b$x\$y").values[0].value
    assert isinstance(escaped, CompositeQuery)
    assert [t.value for t in escaped.terms] == [TokenQuery(None, "a$b", False), "x$y"]
    near = one(registry, "Location", "near", "39.9|116.4|2|mi").values[0].value
    assert near == NearQuery(39.9, 116.4, 2 * 1609.344)
    assert one(registry, "Location", "near", "39.9|116.4").values[0].value == NearQuery(
        39.9, 116.4, 10_000.0
    )
    assert one(registry, "Patient", "_content", "高血压 Ébert").values[0].value == "高血压 ebert"
    assert one(registry, "Patient", "_text", "x").param.type == "string"


def test_references(registry: SearchRegistry) -> None:
    def ref(key: str, value: str, resource_type: str = "Observation") -> object:
        return one(registry, resource_type, key, value).values[0].value

    assert ref("subject", "Patient/123") == ReferenceQuery("Patient", "123", None)
    assert ref("subject", "123") == ReferenceQuery(None, "123", None)
    assert ref("specimen", "123") == ReferenceQuery("Specimen", "123", None)  # single target
    # R4's clinical-patient lists Patient and Group as targets, so a bare id stays untyped
    # (the index only holds Patient references: `subject.where(resolve() is Patient)`).
    assert ref("patient", "123") == ReferenceQuery(None, "123", None)
    assert ref("subject:Patient", "123") == ReferenceQuery("Patient", "123", None)
    assert ref("subject", "http://h/fhir/Patient/9") == ReferenceQuery(
        "Patient", "9", "http://h/fhir/Patient/9"
    )
    assert ref("subject", "urn:uuid:abc") == ReferenceQuery(None, None, "urn:uuid:abc")
    assert ref("subject:identifier", "urn:x|42") == TokenQuery("urn:x", "42", True)
    typed = one(registry, "Observation", "subject:Patient", "1")
    assert typed.modifier == "Patient"


def test_missing_uri_and_empty(registry: SearchRegistry) -> None:
    missing = one(registry, "Patient", "birthdate:missing", "true")
    assert missing.modifier == "missing" and missing.values[0].value is True
    uri = one(registry, "ValueSet", "url:below", "http://example.org/")
    assert uri.values[0].value == "http://example.org/"
    assert parse(registry, "Patient", ("name", "")).params == ()  # empty values are ignored


def test_chains(registry: SearchRegistry) -> None:
    chained = one(registry, "Observation", "subject:Patient.name", "wang")
    assert chained.chain == (("subject", "Patient"),)
    assert chained.code == "name" and chained.param.type == "string"
    # Only Patient among subject's targets has `birthdate`, so the chain records it.
    inferred = one(registry, "Observation", "subject.birthdate", "2024")
    assert inferred.chain == (("subject", "Patient"),) and inferred.param.type == "date"
    ambiguous = one(registry, "Observation", "subject.name:exact", "Wang")
    assert ambiguous.chain == (("subject", None),) and ambiguous.modifier == "exact"
    deep = one(registry, "Observation", "patient.general-practitioner:Practitioner.name", "li")
    assert deep.chain == (("patient", "Patient"), ("general-practitioner", "Practitioner"))


def test_result_parameters(registry: SearchRegistry) -> None:
    request = parse(
        registry,
        "Observation",
        ("_count", "500"),
        ("_offset", "40"),
        ("_sort", "-date,code"),
        ("_sort", "_lastUpdated"),
        ("_summary", "count"),
        ("_elements", "id, code"),
        ("_total", "accurate"),
        ("_include", "Observation:subject:Patient"),
        ("_include:iterate", "Patient:general-practitioner"),
        ("_revinclude", "Provenance:target"),
        ("_format", "json"),
        ("_pretty", "true"),
    )
    assert request.params == () and request.unknown == ()
    assert request.count == 100  # capped at max_count
    assert request.offset == 40
    assert request.sort == (("date", True), ("code", False), ("_lastUpdated", False))
    assert request.summary == "count" and request.total == "accurate"
    assert request.elements == ("id", "code")
    assert request.include == ("Observation:subject:Patient", "Patient:general-practitioner")
    assert request.revinclude == ("Provenance:target",)
    defaults = parse(registry, "Observation")
    assert (defaults.count, defaults.offset, defaults.sort) == (20, 0, ())


def test_lenient_collects_unknown(registry: SearchRegistry) -> None:
    request = parse(registry, "Patient", ("foo", "1"), ("name", "x"), strict=False)
    assert request.unknown == ("foo",) and [p.code for p in request.params] == ["name"]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "key", "value", "fragment"),
    [
        ("Patient", "foo", "1", "Unknown search parameter"),
        ("Patient", "birthdate", "xx2024", "Unknown prefix 'xx'"),
        ("Patient", "birthdate", "2024-13-01", "Invalid date"),
        ("Patient", "birthdate", "abc", "Invalid date"),
        ("RiskAssessment", "probability", "abc", "Invalid number"),
        ("RiskAssessment", "probability", "gt", "Invalid number"),
        ("Observation", "value-quantity", "5.4|mg", "Invalid quantity"),
        ("Patient", "birthdate:exact", "2024", "not valid for date"),
        ("Patient", "name:not", "x", "not valid for string"),
        ("Observation", "subject:Practitioner", "1", "not valid for reference"),
        ("Observation", "subject", "Practitioner/1", "cannot refer to a Practitioner"),
        ("Observation", "subject", "foo/bar", "Invalid reference"),
        ("Patient", "name.family", "x", "Cannot chain"),
        ("Observation", "subject:Practitioner.name", "x", "cannot refer to a Practitioner"),
        ("Observation", "subject.nope", "x", "has a parameter 'nope'"),
        ("Patient", "name:missing", "maybe", "true or false"),
        ("Patient", "identifier:of-type", "a|b", "system|code|value"),
        ("Patient", "identifier", "|", "Empty token"),
        ("Observation", "code-value-quantity", "http://loinc.org|8480-6", "2 '$'-separated"),
        ("Observation", "code-value-quantity", "a$b$c", "2 '$'-separated"),
        ("Observation", "code-value-quantity", "a$", "2 '$'-separated"),
        ("Observation", "code-value-quantity", "a$x140", "Invalid number"),
        ("Observation", "value-quantity", f"5|{UCUM}|notaunit", "not a valid UCUM unit"),
        ("Location", "near", "39.9", "latitude|longitude"),
        ("Location", "near", "39.9||5", "latitude|longitude"),
        ("Location", "near", "91|0|5|km", "within ±90"),
        ("Location", "near", "1|2|x|km", "not a number"),
        ("Location", "near", "1|2|5|kg", "unit of length"),
        ("Patient", "gender:in", "http://example.org/no-such-vs", "unknown or cannot be expanded"),
        ("Patient", "gender:not-in", "http://hl7.org/fhir/ValueSet/observation-codes", "unknown"),
        ("Observation", "code:below", "http://loinc.org|8480-6", "not supported"),
        ("Observation", "subject:above", "x", "not supported"),
    ],
)
def test_parameter_errors(
    registry: SearchRegistry, resource_type: str, key: str, value: str, fragment: str
) -> None:
    caught = error(registry, resource_type, (key, value))
    assert caught.expression == key
    assert fragment in str(caught)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_count", "-1"),
        ("_count", "abc"),
        ("_count", "1.5"),
        ("_offset", "-5"),
        ("_sort", "nope"),
        ("_sort", "-"),
        ("_summary", "maybe"),
        ("_total", "some"),
        ("_include", "Observation"),
        ("_include", "Observation:status"),
        ("_revinclude", "Observation:subject:Medication"),
    ],
)
def test_result_parameter_errors(registry: SearchRegistry, key: str, value: str) -> None:
    caught = error(registry, "Observation", (key, value))
    assert caught.expression == key.partition(":")[0]


def test_count_zero_is_allowed(registry: SearchRegistry) -> None:
    assert parse(registry, "Patient", ("_count", "0")).count == 0
