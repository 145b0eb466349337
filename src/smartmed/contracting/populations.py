"""Key populations (重点人群) of family-doctor contracting, derived from FHIR data.

The groups are those the national basic public health service specification manages
one by one, and which the family-doctor policy puts first (关于推进家庭医生签约服务的
指导意见, 国医改办发〔2016〕1号: "老年人、孕产妇、儿童、残疾人等人群以及高血压、糖尿病、
结核病等慢性疾病和严重精神障碍患者"):

《国家基本公共卫生服务规范（第三版）》(国家卫生计生委, 2017):

- ``elderly``: 老年人健康管理服务规范 — residents aged 65 and over;
- ``child``: 0～6岁儿童健康管理服务规范 — children aged 0 to 6 (before their 7th birthday);
- ``pregnant``: 孕产妇健康管理服务规范 — pregnancy and the puerperium: an active
  Condition in ICD-10 chapter XV (O00–O99) or Z33 (pregnant state), Z34/Z35
  (supervision of normal / high-risk pregnancy);
- ``hypertension``: 高血压患者健康管理服务规范 — I10–I15 (hypertensive diseases);
- ``diabetes``: 2型糖尿病患者健康管理服务规范 — E11; E10, E13 and E14 too, since the
  signing policy names diabetes without the type (E12, malnutrition-related, is absent
  from ICD-10-CN practice and is included for completeness);
- ``mental``: 严重精神障碍患者管理服务规范 — the six disorders it lists: schizophrenia
  F20, schizoaffective disorder F25, persistent delusional (paranoid) disorder F22,
  bipolar affective disorder F31, mental disorders due to epilepsy (F06, organic mental
  disorders due to brain disease, which is how they are coded), mental retardation with
  mental disorder F70–F79;
- ``tuberculosis``: 肺结核患者健康管理服务规范 — respiratory tuberculosis A15–A16.

Conditions count when their clinicalStatus is active, recurrence or relapse and they are
not refuted or entered in error.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

ICD10 = "http://hl7.org/fhir/sid/icd-10"
GROUPS = ("elderly", "child", "pregnant", "hypertension", "diabetes", "mental", "tuberculosis")
ELDERLY_AGE = 65  # years, and over
CHILD_MAX_AGE = 6  # years, inclusive

# ICD-10 three-character categories (and ranges) per group.
_RANGES: dict[str, tuple[tuple[str, str], ...]] = {
    "pregnant": (("O00", "O99"), ("Z33", "Z35")),
    "hypertension": (("I10", "I15"),),
    "diabetes": (("E10", "E14"),),
    "mental": (
        ("F20", "F20"),
        ("F22", "F22"),
        ("F25", "F25"),
        ("F31", "F31"),
        ("F06", "F06"),
        ("F70", "F79"),
    ),
    "tuberculosis": (("A15", "A16"),),
}
_ACTIVE = {"active", "recurrence", "relapse"}


def age_on(birth_date: str | None, on: date) -> int | None:
    """Age in whole years on ``on``; None without a usable birth date (a year alone counts
    as 1 January, which can only make the person seem older by less than a year)."""
    if not birth_date:
        return None
    parts = birth_date.split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2][:2]) if len(parts) > 2 else 1
        born = date(year, month, day)
    except (ValueError, IndexError):
        return None
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return years if years >= 0 else None


def icd10_groups(code: str) -> set[str]:
    """The groups an ICD-10 code (``I10``, ``E11.9``, ``O24.4``) belongs to."""
    category = code.strip().upper()[:3]
    if len(category) != 3:
        return set()
    return {
        group
        for group, ranges in _RANGES.items()
        if any(low <= category <= high for low, high in ranges)
    }


def _condition_active(condition: dict[str, Any]) -> bool:
    clinical = {c.get("code") for c in (condition.get("clinicalStatus") or {}).get("coding", [])}
    verification = {
        c.get("code") for c in (condition.get("verificationStatus") or {}).get("coding", [])
    }
    return bool(clinical & _ACTIVE) and not verification & {"refuted", "entered-in-error"}


def key_populations(
    patient: dict[str, Any], conditions: Iterable[dict[str, Any]], *, on: date
) -> list[str]:
    """The key-population groups of ``patient`` on ``on``, in :data:`GROUPS` order."""
    found: set[str] = set()
    age = age_on(patient.get("birthDate"), on)
    if age is not None and age >= ELDERLY_AGE:
        found.add("elderly")
    if age is not None and age <= CHILD_MAX_AGE:
        found.add("child")
    for condition in conditions:
        if not _condition_active(condition):
            continue
        for coding in (condition.get("code") or {}).get("coding", []):
            if coding.get("system") == ICD10 and isinstance(coding.get("code"), str):
                found |= icd10_groups(coding["code"])
    return [g for g in GROUPS if g in found]
