"""An audit record as a FHIR R4 AuditEvent (what is materialised into the resource store).

- REST interactions: type ``audit-event-type|rest``, subtype ``restful-interaction|<code>``;
- login, failed login, logout: type DICOM 110114 User Authentication, subtype DICOM 110122
  Login / 110123 Logout plus the platform's own code (``login-failed`` tells them apart);
- export: DICOM 110106 Export; other platform events (break-glass, consent, ...): DICOM
  110110 Patient Record, subtype the platform code.

The person (or system client) is the requesting agent, with network address and
purposeOfUse; the OAuth client is a second agent; the platform is the source observer;
every touched reference is an entity, patients with role 1 (Patient) so that
``AuditEvent?patient=`` finds them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from smartmed.audit.record import instant
from smartmed.fhir.hooks import AuditRecord

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SUBTYPE_SYSTEM = "urn:smartmed:audit-subtype"
ROLE_SYSTEM = "urn:smartmed:role"
ACCOUNT_SYSTEM = "urn:smartmed:account"
CLIENT_SYSTEM = "urn:smartmed:oauth-client"

REST_CODES = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history",
        "history-instance",
        "history-type",
        "history-system",
        "create",
        "search",
        "search-type",
        "search-system",
        "capabilities",
        "transaction",
        "batch",
        "operation",
    }
)
_LOGIN = {"login": ("110122", "Login"), "login-failed": ("110122", "Login")}
_LOGOUT = {"logout": ("110123", "Logout")}
# AuditEvent.agent.who may point at these types only (R4 AuditEvent definition).
AGENT_TYPES = frozenset(
    {"PractitionerRole", "Practitioner", "Organization", "Device", "Patient", "RelatedPerson"}
)
_REF = re.compile(r"([A-Z][A-Za-z]*)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)]}


def event_type(subtype: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """AuditEvent.type and .subtype for a record's subtype."""
    if subtype in REST_CODES:
        return _coding(EVENT_TYPE, "rest", "Restful Operation"), [_coding(RESTFUL, subtype)]
    own = _coding(SUBTYPE_SYSTEM, subtype)
    dicom = _LOGIN.get(subtype) or _LOGOUT.get(subtype)
    if dicom is not None:
        return _coding(DCM, "110114", "User Authentication"), [_coding(DCM, *dicom), own]
    if subtype == "export":
        return _coding(DCM, "110106", "Export"), [own]
    if subtype == "access-policy":
        return _coding(DCM, "110136", "Security Roles Changed"), [own]
    return _coding(DCM, "110110", "Patient Record"), [own]


def _target(ref: str, resource_types: Collection[str]) -> str | None:
    found = _REF.fullmatch(ref)
    return found.group(1) if found and found.group(1) in resource_types else None


def _requestor(record: AuditRecord, resource_types: Collection[str]) -> dict[str, Any]:
    system_client = record.account is not None and record.account == record.client_id
    agent: dict[str, Any] = {
        "type": _concept(DCM, "110150", "Application")
        if system_client
        else _concept(ROLE_TYPE, "humanuser", "human user")
    }
    if record.roles:
        agent["role"] = [_concept(ROLE_SYSTEM, r) for r in record.roles]
    target = _target(record.agent, resource_types) if record.agent else None
    if record.agent and target in AGENT_TYPES:
        agent["who"] = {"reference": record.agent}
    elif record.account:
        system = CLIENT_SYSTEM if system_client else ACCOUNT_SYSTEM
        agent["who"] = {"identifier": {"system": system, "value": record.account}}
    if record.account and "reference" in agent.get("who", {}):
        agent["altId"] = record.account
    agent["requestor"] = True
    if record.source_ip:
        agent["network"] = {"address": record.source_ip, "type": "2"}  # 2 = IP address
    if record.purpose_of_use:
        agent["purposeOfUse"] = [_concept(PURPOSE, record.purpose_of_use)]
    return agent


def _entities(record: AuditRecord, resource_types: Collection[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    patients = [p for p in dict.fromkeys(record.patients) if _target(p, resource_types)]
    for patient in patients:
        out.append(
            {
                "what": {"reference": patient},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    for ref in dict.fromkeys(record.entities):
        if ref in patients:
            continue
        target = _target(ref, resource_types)
        entity: dict[str, Any] = (
            {"what": {"reference": ref}, "type": _coding(RESOURCE_TYPES, target)}
            if target
            else {"what": {"display": ref}, "type": _coding(ENTITY_TYPE, "2", "System Object")}
        )
        entity["role"] = _coding(OBJECT_ROLE, "4", "Domain Resource")
        out.append(entity)
    if record.query:
        out.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "query": base64.b64encode(record.query.encode()).decode(),
            }
        )
    if record.extra:
        out.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "name": "context",
                "detail": [{"type": k, "valueString": v} for k, v in sorted(record.extra.items())],
            }
        )
    return out


def to_audit_event(
    seq: int, record: AuditRecord, *, site: str, resource_types: Collection[str]
) -> dict[str, Any]:
    """The AuditEvent (id ``audit-<seq>``) for the chained record ``seq``."""
    type_, subtypes = event_type(record.subtype)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"audit-{seq}",
        "type": type_,
        "subtype": subtypes,
        "action": record.action,
        "recorded": instant(record.recorded),
        "outcome": record.outcome,
    }
    if record.detail:
        event["outcomeDesc"] = record.detail
    if record.purpose_of_use:
        event["purposeOfEvent"] = [_concept(PURPOSE, record.purpose_of_use)]
    agents = [_requestor(record, resource_types)]
    if record.client_id and record.client_id != record.account:
        agents.append(
            {
                "type": _concept(DCM, "110150", "Application"),
                "who": {"identifier": {"system": CLIENT_SYSTEM, "value": record.client_id}},
                "requestor": False,
            }
        )
    event["agent"] = agents
    event["source"] = {
        "site": site,
        "observer": {"identifier": {"system": "urn:smartmed:node", "value": site}},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    entities = _entities(record, resource_types)
    if entities:
        event["entity"] = entities
    return event


def event_ids(seq: int, record: AuditRecord, resource_types: Collection[str]) -> list[str]:
    """The ids of the AuditEvents record ``seq`` becomes (see :func:`to_audit_events`)."""
    patients = _patients(record, resource_types)
    if len(patients) <= 1:
        return [f"audit-{seq}"]
    return [f"audit-{seq}-{n}" for n in range(1, len(patients) + 1)]


def _patients(record: AuditRecord, resource_types: Collection[str]) -> list[str]:
    return [p for p in dict.fromkeys(record.patients) if _target(p, resource_types)]


def to_audit_events(
    seq: int, record: AuditRecord, *, site: str, resource_types: Collection[str]
) -> list[dict[str, Any]]:
    """The AuditEvents for the chained record ``seq``: one per patient whose data it touched.

    IHE Basic Audit Log Patterns (BALP, "Patient privacy" and the query patterns): when one
    interaction returns data of several patients, an AuditEvent is recorded *for each
    patient*, so that each patient's access log (``AuditEvent?patient=``) shows their own
    event without revealing who else was in the result. Such a record becomes
    ``audit-<seq>-1`` … ``audit-<seq>-<n>``, each naming one patient and the query, not the
    other resources read (which patient they belong to is not recorded); the hash-chained
    log keeps the whole record as the evidence. Other records become ``audit-<seq>``.
    """
    patients = _patients(record, resource_types)
    if len(patients) <= 1:
        return [to_audit_event(seq, record, site=site, resource_types=resource_types)]
    events = []
    for n, patient in enumerate(patients, start=1):
        own = replace(
            record,
            patients=(patient,),
            entities=tuple(e for e in record.entities if e == patient),
        )
        event = to_audit_event(seq, own, site=site, resource_types=resource_types)
        event["id"] = f"audit-{seq}-{n}"
        events.append(event)
    return events
