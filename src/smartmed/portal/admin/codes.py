"""Code systems and choices of the basic-information forms.

The systems are those of the demo county (``smartmed.demo.generator``), so records made
in the portal and demo records search and display alike. Labels are English message
ids, translated when shown.
"""

from __future__ import annotations

from typing import Any


def _(text: str) -> str:
    return text


ORG_KIND_SYSTEM = "urn:smartmed:org-type"
ORG_LEVEL_SYSTEM = "urn:smartmed:admin-level"
ORG_ID_SYSTEM = "urn:smartmed:org"
HL7_ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
PRACTITIONER_SYSTEM = "urn:smartmed:practitioner"
ROLE_SYSTEM = "urn:smartmed:practitioner-role"
QUALIFICATION_SYSTEM = "urn:smartmed:qualification"
HL7_PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
SNOMED = "http://snomed.info/sct"
SPECIALTY_SYSTEM = "urn:smartmed:specialty"
CARE_TEAM_SYSTEM = "urn:smartmed:care-team"
LOINC = "http://loinc.org"
TEAM_ROLE_SYSTEM = "urn:smartmed:care-team-role"
SERVICE_AREA_URL = "urn:smartmed:extension:care-team-service-area"

# Kinds of institution: local code -> (label, HL7 organization-type code).
ORG_KINDS = {
    "health-authority": _("Health authority"),
    "county-hospital": _("County hospital"),
    "tcm-hospital": _("TCM hospital"),
    "township-health-centre": _("Township health centre"),
    "village-clinic": _("Village clinic"),
    "pharmacy": _("Pharmacy"),
    "exam-centre": _("Shared examination centre"),
}
HL7_KIND = {"health-authority": ("govt", "Government")}
DEPARTMENT_KIND = "department"
LEVELS = {
    "city": _("City"),
    "county": _("County"),
    "township": _("Township"),
    "village": _("Village"),
}
QUALIFICATIONS = {
    "physician": _("Licensed physician"),
    "tcm-physician": _("Licensed TCM physician"),
    "assistant-physician": _("Assistant physician"),
    "rural-doctor": _("Rural doctor"),
    "nurse": _("Registered nurse"),
    "pharmacist": _("Licensed pharmacist"),
    "public-health": _("Public-health practitioner"),
}
STAFF_ROLES = {
    "doctor": _("Doctor"),
    "nurse": _("Nurse"),
    "pharmacist": _("Pharmacist"),
    "researcher": _("Public-health worker"),
}
# Specialties: code -> (system, English display, label message id).
SPECIALTIES = {
    "394814009": (SNOMED, "General practice", _("General practice")),
    "408440000": (SNOMED, "Public health medicine", _("Public health")),
    "419192003": (SNOMED, "Internal medicine", _("Internal medicine")),
    "394579002": (SNOMED, "Cardiology", _("Cardiology")),
    "394583002": (SNOMED, "Endocrinology", _("Endocrinology")),
    "394537008": (SNOMED, "Pediatric specialty", _("Paediatrics")),
    "408470005": (SNOMED, "Obstetrics", _("Obstetrics")),
    "394609007": (SNOMED, "Surgery-general", _("General surgery")),
    "773568002": (SNOMED, "Emergency medicine", _("Emergency medicine")),
    "tcm": (SPECIALTY_SYSTEM, "中医", _("Traditional Chinese medicine")),
}
TEAM_ROLES = {
    "leader": _("Team leader"),
    "gp": _("General practitioner"),
    "nurse": _("Nurse"),
    "public-health": _("Public-health worker"),
}
GENDERS = {"female": _("Female"), "male": _("Male"), "other": _("Other"), "unknown": _("Unknown")}


def concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        body["text"] = text
    return body


def code_in(concepts: list[dict[str, Any]] | None, system: str) -> str | None:
    """The code of ``system`` among CodeableConcepts, if any."""
    for item in concepts or []:
        for coding in item.get("coding") or []:
            if coding.get("system") == system:
                return str(coding.get("code"))
    return None


def org_kind(org: dict[str, Any]) -> str | None:
    return code_in(org.get("type"), ORG_KIND_SYSTEM)
