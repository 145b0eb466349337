"""Key populations from birth date and active ICD-10 conditions."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from smartmed.contracting.populations import age_on, icd10_groups, key_populations


def cond(code: str, status: str = "active", verification: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "clinicalStatus": {"coding": [{"code": status}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
    }
    if verification:
        body["verificationStatus"] = {"coding": [{"code": verification}]}
    return body


@given(
    born=st.dates(min_value=date(1900, 1, 1), max_value=date(2026, 11, 22)),
    on=st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)),
)
def test_age_matches_counting_birthdays(born: date, on: date) -> None:
    age = age_on(born.isoformat(), on)
    if on < born:
        assert age is None
        return
    assert age is not None
    # Oracle: the number of birthdays (29 Feb counted on 1 Mar in common years) up to on.
    count = 0
    for year in range(born.year + 1, on.year + 1):
        try:
            birthday = born.replace(year=year)
        except ValueError:
            birthday = date(year, 3, 1)
        if birthday <= on:
            count += 1
    assert age == count


@given(days=st.integers(min_value=-400, max_value=400))
def test_boundaries_of_65_and_of_0_to_6(days: int) -> None:
    on = date(2026, 11, 22)
    sixty_five = date(1961, 11, 22) + timedelta(days=days)  # 65th birthday on ``on`` at 0
    groups = key_populations({"birthDate": sixty_five.isoformat()}, [], on=on)
    assert ("elderly" in groups) == (days <= 0)
    seventh = date(2019, 11, 22) + timedelta(days=days)  # 7th birthday on ``on`` at 0
    groups = key_populations({"birthDate": seventh.isoformat()}, [], on=on)
    assert ("child" in groups) == (days > 0)


def test_icd10_groups() -> None:
    assert icd10_groups("I10") == {"hypertension"}
    assert icd10_groups("i15.0") == {"hypertension"}
    assert icd10_groups("I20") == set()
    assert icd10_groups("E11.9") == {"diabetes"}
    assert icd10_groups("E15") == set()
    assert icd10_groups("O24.4") == {"pregnant"}
    assert icd10_groups("Z34.0") == {"pregnant"}
    assert icd10_groups("Z36") == set()
    assert {c: icd10_groups(c) for c in ("F20.0", "F22", "F25.1", "F31.2", "F06.2", "F72")} == {
        c: {"mental"} for c in ("F20.0", "F22", "F25.1", "F31.2", "F06.2", "F72")
    }
    assert icd10_groups("F32") == set()  # depression is not one of the six disorders
    assert icd10_groups("A15.0") == icd10_groups("A16") == {"tuberculosis"}
    assert icd10_groups("A17") == set()  # tuberculosis of the nervous system: not pulmonary
    assert icd10_groups("") == icd10_groups("I1") == set()


def test_only_active_confirmed_conditions_count_and_order_is_fixed() -> None:
    patient = {"birthDate": "1950-01-01"}
    conditions = [
        cond("E11.9"),
        cond("I10", "resolved"),
        cond("A15.0", verification="refuted"),
        cond("F20.0", "relapse"),
    ]
    assert key_populations(patient, conditions, on=date(2026, 1, 1)) == [
        "elderly",
        "diabetes",
        "mental",
    ]
    assert key_populations({}, [cond("I10", "inactive")], on=date(2026, 1, 1)) == []
    assert key_populations({"birthDate": "garbage"}, [], on=date(2026, 1, 1)) == []
