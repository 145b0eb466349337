"""Code systems, identifier systems and small FHIR building blocks shared by the generator.

Identifier and code systems minted for the demo are ``urn:smartmed:`` URIs (see
``generator``); the others are the HL7, LOINC, SNOMED CT, ICD-10, RxNorm and UCUM systems.
"""

from __future__ import annotations

from datetime import date
from typing import Any

Resource = dict[str, Any]

# The reference date: "today" for the synthetic county. Fixed (not the clock) so that
# the same seed gives the same Bundles on any day.
DEFAULT_AS_OF = date(2026, 11, 1)
HISTORY_DAYS = 730  # encounters and observations fall in the two years before as_of

ORG_SYSTEM = "urn:smartmed:org"
PRACTITIONER_SYSTEM = "urn:smartmed:practitioner"
ROLE_SYSTEM = "urn:smartmed:practitioner-role"
CARE_TEAM_SYSTEM = "urn:smartmed:care-team"
RESIDENT_ID_SYSTEM = "urn:smartmed:id:resident"
ORG_TYPE_SYSTEM = "urn:smartmed:org-type"
QUALIFICATION_SYSTEM = "urn:smartmed:qualification"
ENCOUNTER_TYPE_SYSTEM = "urn:smartmed:encounter-type"
SPECIALTY_SYSTEM = "urn:smartmed:specialty"
STAFF_ROLE_SYSTEM = "urn:smartmed:staff-role"

HL7_ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
HL7_PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0131 = "http://terminology.hl7.org/CodeSystem/v2-0131"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VER = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
MEDREQ_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


def coding(system: str, code: str, display: str) -> Resource:
    """A Coding."""
    return {"system": system, "code": code, "display": display}


def concept(system: str, code: str, display: str, text: str | None = None) -> Resource:
    """A CodeableConcept of one Coding, with a (Chinese) text when given."""
    result: Resource = {"coding": [coding(system, code, display)]}
    if text:
        result["text"] = text
    return result


def timestamp(day: date, minutes: int) -> str:
    """A local (UTC+8) dateTime ``minutes`` after midnight of ``day``."""
    return f"{day.isoformat()}T{minutes // 60:02d}:{minutes % 60:02d}:00+08:00"


def quantity(value: float, unit: str, ucum: str) -> Resource:
    """A UCUM Quantity."""
    return {"value": value, "unit": unit, "system": UCUM, "code": ucum}


def org_ref(code: str, display: str | None = None) -> Resource:
    """A conditional reference to the organisation with that identifier."""
    ref: Resource = {"reference": f"Organization?identifier={ORG_SYSTEM}|{code}"}
    if display:
        ref["display"] = display
    return ref


def staff_ref(code: str, name: str) -> Resource:
    """A conditional reference to a practitioner by identifier."""
    return {"reference": f"Practitioner?identifier={PRACTITIONER_SYSTEM}|{code}", "display": name}


def entry(resource: Resource, full_url: str, if_none_exist: str | None = None) -> Resource:
    """A transaction entry creating ``resource`` (conditionally with ``if_none_exist``)."""
    request: Resource = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url, "resource": resource, "request": request}


def clip(value: float, low: float, high: float) -> float:
    """``value`` kept within [low, high]."""
    return min(max(value, low), high)
