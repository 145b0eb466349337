"""Audit views over the materialised ``AuditEvent`` resources (docs/audit.md).

==============  =====================================================================
``/audit``      the audit administrator's list: filters (patient, agent, dates, action,
                subtype, outcome), sorting by date, paging
``/record-access``  the resident's "who accessed my record": who, when, what, why
==============  =====================================================================

Both read through the engine's search under the caller's access guard (installed by the
portal session), exactly as ``GET /fhir/R4/AuditEvent`` would: an audit administrator may
search every event, a resident only those of their own record. The audit trail is for the
roles the access policy in force lets search the ``audit`` category for everyone (audit
administrators as shipped; platform or institution administrators once the rights editor
grants them ``audit: s``); an institution administrator sees the events of the staff of
their own organisations (and those below them) only.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Request, Response

from smartmed.identity.principal import Role
from smartmed.portal import fhirdata
from smartmed.portal.admin.listing import ListQuery
from smartmed.portal.admin.scope import writable_orgs
from smartmed.portal.nav import ROLE_LABELS, require
from smartmed.portal.render import gettext_for, render
from smartmed.portal.session import get_session

SORTS = {"date": "date"}
FILTERS = ("patient", "agent", "from", "to", "action", "subtype", "outcome")

ROLE_SYSTEM = "urn:smartmed:role"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
EMERGENCY = "ETREAT"


def N_(text: str) -> str:  # noqa: N802
    """Marks a message for extraction; translated when shown."""
    return text


ACTIONS = {
    "C": N_("Create"),
    "R": N_("Read"),
    "U": N_("Update"),
    "D": N_("Delete"),
    "E": N_("Execute"),
}
OUTCOMES = {
    "0": N_("Success"),
    "4": N_("Minor failure"),
    "8": N_("Serious failure"),
    "12": N_("Major failure"),
}
SUBTYPES = {
    "read": N_("Read"),
    "vread": N_("Read a version"),
    "search-type": N_("Search"),
    "history-instance": N_("History"),
    "create": N_("Create"),
    "update": N_("Update"),
    "patch": N_("Patch"),
    "delete": N_("Delete"),
    "operation": N_("Operation"),
    "transaction": N_("Transaction"),
    "batch": N_("Batch"),
    "login": N_("Login"),
    "login-failed": N_("Failed login"),
    "logout": N_("Logout"),
    "break-glass": N_("Break the glass"),
    "export": N_("Export"),
    "consent": N_("Consent"),
}
PURPOSES = {
    "TREAT": N_("Treatment"),
    EMERGENCY: N_("Emergency treatment (break the glass)"),
    "HOPERAT": N_("Healthcare operations"),
    "HPAYMT": N_("Payment"),
    "PUBHLTH": N_("Public health"),
    "HRESCH": N_("Research"),
    "PATRQT": N_("Patient request"),
    "FAMRQT": N_("Family request"),
}


def _codes(concepts: list[dict[str, Any]] | None, system: str | None = None) -> list[str]:
    return [
        str(c.get("code"))
        for concept in concepts or []
        for c in concept.get("coding") or []
        if c.get("code") and (system is None or c.get("system") == system)
    ]


def describe(event: dict[str, Any], included: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a template needs of an AuditEvent: who, roles, when, what, why, outcome."""
    agents = event.get("agent") or []
    agent = next((a for a in agents if a.get("requestor")), agents[0] if agents else {})
    who = agent.get("who") or {}
    reference = str(who.get("reference") or "")
    person = included.get(reference)
    identifier = who.get("identifier") or {}
    roles = []
    for code in _codes(agent.get("role"), ROLE_SYSTEM):
        try:
            roles.append(ROLE_LABELS[Role(code)])
        except ValueError:
            roles.append(code)
    patients, resources = [], []
    for entity in event.get("entity") or []:
        what = str((entity.get("what") or {}).get("reference") or "")
        if (entity.get("role") or {}).get("code") == "1" and what:
            patients.append(what)
        elif what:
            resources.append(what)
    purposes = _codes(agent.get("purposeOfUse")) or _codes(event.get("purposeOfEvent"))
    subtypes = [str(c.get("code")) for c in event.get("subtype") or [] if c.get("code")]
    subtype = next((s for s in subtypes if s in SUBTYPES), subtypes[0] if subtypes else "")
    return {
        "id": event.get("id", ""),
        "recorded": event.get("recorded", ""),
        "reference": reference,
        "person": person,
        "display": str(who.get("display") or identifier.get("value") or ""),
        "account": str(agent.get("altId") or ""),
        "roles": roles,
        "address": str((agent.get("network") or {}).get("address") or ""),
        "action": str(event.get("action") or ""),
        "subtype": subtype,
        "patients": patients,
        "resources": resources,
        "types": sorted({r.split("/", 1)[0] for r in resources}),
        "purposes": purposes,
        "emergency": EMERGENCY in purposes or subtype == "break-glass",
        "outcome": str(event.get("outcome") or ""),
        "detail": str(event.get("outcomeDesc") or ""),
    }


def _day(value: str) -> str | None:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        return None


def _reference(value: str, type_: str) -> str:
    return value if "/" in value else f"{type_}/{value}"


def search_params(query: ListQuery) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """FHIR search parameters of the admin list's filters, and the filters' errors."""
    _f = query.filters
    params: list[tuple[str, str]] = [query.fhir_sort(SORTS)]
    errors: dict[str, str] = {}
    if _f.get("patient"):
        params.append(("patient", _reference(_f["patient"], "Patient")))
    if _f.get("agent"):
        agent = _f["agent"]
        params.append(("agent", agent) if "/" in agent else ("altid", agent))
    for name, prefix in (("from", "ge"), ("to", "le")):
        if _f.get(name):
            day = _day(_f[name])
            if day is None:
                errors[name] = N_("Enter a date as YYYY-MM-DD.")
            else:
                params.append(("date", prefix + day))
    if _f.get("action") in ACTIONS:
        params.append(("action", _f["action"]))
    if _f.get("subtype") in SUBTYPES:
        params.append(("subtype", _f["subtype"]))
    if _f.get("outcome") in OUTCOMES:
        params.append(("outcome", _f["outcome"]))
    params.append(("_include", "AuditEvent:agent"))
    return params, errors


def _parse(request: Request) -> ListQuery:
    query = ListQuery.parse(request, SORTS, FILTERS)
    if "sort" not in request.query_params:
        query.sort = "-date"  # newest first
    for name in ("patient", "agent"):
        if name in query.filters:
            query.filters[name] = query.filters[name][:100]
    return query


async def jurisdiction_agents(request: Request) -> list[str] | None:
    """For an institution administrator: the practitioners with a role in their
    organisations or below (the agents whose events they see); None: no restriction."""
    if get_session(request).active_role != Role.INSTITUTION_ADMIN:
        return None
    allowed = await writable_orgs(request)
    if allowed is None:
        return None
    if not allowed:
        return []
    orgs = ",".join(f"Organization/{o}" for o in sorted(allowed))
    roles = await fhirdata.search_all(
        request, "PractitionerRole", [("organization", orgs), ("_elements", "practitioner")], 5000
    )
    found = {
        str((r.get("practitioner") or {}).get("reference") or "")
        for r in roles
        if str((r.get("practitioner") or {}).get("reference") or "").startswith("Practitioner/")
    }
    return sorted(found)


def restrict_agents(
    params: list[tuple[str, str]], agents: list[str] | None
) -> list[tuple[str, str]] | None:
    """``params`` limited to events of ``agents`` (None: nothing can match)."""
    if agents is None:
        return params
    chosen = [v for k, v in params if k == "agent"]
    if chosen:
        return params if chosen[0] in agents else None
    if not agents:
        return None
    return [*params, ("agent", ",".join(agents))]


def _template(request: Request, page: str) -> str:
    fragment = request.headers.get("hx-request") == "true"
    return f"audit/{page}_results.html" if fragment else f"audit/{page}.html"


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/audit")
    async def audit_list(request: Request) -> Response:
        require(request, "audit")
        _ = gettext_for(request)
        query = _parse(request)
        params, errors = search_params(query)
        agents = await jurisdiction_agents(request)
        limited = restrict_agents(params, agents)
        if limited is None:
            page = fhirdata.Page([], {}, 0, query.offset, query.size)
        else:
            page = await fhirdata.search(
                request, "AuditEvent", limited, offset=query.offset, count=query.size
            )
        events = [describe(e, page.included) for e in page.items]
        return render(
            request,
            _template(request, "admin"),
            query=query,
            page=page,
            events=events,
            errors={k: _(v) for k, v in errors.items()},
            scoped=agents is not None,
            actions=ACTIONS,
            outcomes=OUTCOMES,
            subtypes=SUBTYPES,
            purposes=PURPOSES,
        )

    @router.get("/record-access")
    async def my_access(request: Request) -> Response:
        require(request, "access")
        session = get_session(request)
        assert session.account is not None
        fhir_user = session.account.fhir_user or ""
        query = _parse(request)
        query.filters = {}
        events: list[dict[str, Any]] = []
        page = None
        if fhir_user.startswith("Patient/"):
            params = [
                ("patient", fhir_user),
                query.fhir_sort(SORTS),
                ("_include", "AuditEvent:agent"),
            ]
            page = await fhirdata.search(
                request, "AuditEvent", params, offset=query.offset, count=query.size
            )
            events = [describe(e, page.included) for e in page.items]
        return render(
            request,
            _template(request, "mine"),
            query=query,
            page=page,
            events=events,
            me=fhir_user,
            actions=ACTIONS,
            subtypes=SUBTYPES,
            purposes=PURPOSES,
        )

    return router
