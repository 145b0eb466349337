"""Family-doctor teams: FHIR CareTeam with a leader, general practitioners, nurses and
public-health workers (PractitionerRole members, each with a team role) and a service
area (the villages and townships served, as an extension of Organization references)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from smartmed.portal import fhirdata
from smartmed.portal.admin import codes
from smartmed.portal.admin.fields import N_, Field
from smartmed.portal.admin.fields import version as _version
from smartmed.portal.admin.listing import ListQuery
from smartmed.portal.admin.scope import may_write, writable_orgs
from smartmed.portal.forms import Validator, form_data, form_lists, refused
from smartmed.portal.nav import require
from smartmed.portal.render import flash, gettext_for, render

BASE = "/admin/teams"
SORTS = {"updated": "_lastUpdated", "status": "status"}
MEMBER_FIELDS = ("gp", "nurse", "public-health")
FAMILY_DOCTOR_TEAM = ("LA28865-6", "Longitudinal care-coordination focused care team")


async def member_choices(request: Request) -> list[tuple[str, str]]:
    """(PractitionerRole id, "name · organisation") of every active practitioner role."""
    found = await fhirdata.search(
        request,
        "PractitionerRole",
        [("active", "true"), ("_include", "PractitionerRole:organization")],
        count=5000,
    )
    out = []
    for role in found.items:
        who = (role.get("practitioner") or {}).get("display") or role["id"]
        org = found.included.get((role.get("organization") or {}).get("reference", ""), {})
        out.append((role["id"], f"{who} · {org.get('name', '')}"))
    return sorted(out, key=lambda item: item[1])


async def _orgs(request: Request) -> list[tuple[str, str]]:
    items = await fhirdata.search_all(request, "Organization", [("_sort", "name")], 5000)
    return [
        (o["id"], str(o.get("name", o["id"])))
        for o in items
        if codes.org_kind(o) != codes.DEPARTMENT_KIND
    ]


def fields(orgs: list[tuple[str, str]], members: list[tuple[str, str]]) -> list[Field]:
    return [
        Field("name", "Team name", required=True),
        Field("organization", "Managing institution", "select", True, tuple(orgs), False),
        Field("status", "Status", "select", True, (("active", "Active"), ("inactive", "Inactive"))),
        Field("leader", "Team leader", "select", True, tuple(members), False),
        Field("gp", "General practitioners", "multi", True, tuple(members), False, size=6),
        Field("nurse", "Nurses", "multi", False, tuple(members), False, size=6),
        Field(
            "public-health", "Public-health workers", "multi", False, tuple(members), False, size=6
        ),
        Field("area", "Service area", "multi", False, tuple(orgs), False, size=6),
    ]


def _values(team: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "version": str((team.get("meta") or {}).get("versionId", "")),
        "name": team.get("name", ""),
        "status": team.get("status", "active"),
        "organization": next(
            (
                r.get("reference", "").split("/", 1)[-1]
                for r in team.get("managingOrganization") or []
            ),
            "",
        ),
    }
    for key in MEMBER_FIELDS:
        values[key + "[]"] = []
    for p in team.get("participant") or []:
        ref = (p.get("member") or {}).get("reference", "").split("/", 1)[-1]
        role = codes.code_in(p.get("role"), codes.TEAM_ROLE_SYSTEM)
        if role == "leader":
            values["leader"] = ref
        elif role in MEMBER_FIELDS:
            values[role + "[]"].append(ref)
    values["area[]"] = [
        (e.get("valueReference") or {}).get("reference", "").split("/", 1)[-1]
        for e in team.get("extension") or []
        if e.get("url") == codes.SERVICE_AREA_URL
    ]
    return values


def build_team(
    values: dict[str, Any], existing: dict[str, Any] | None, names: dict[str, str]
) -> dict[str, Any]:
    team: dict[str, Any] = dict(existing or {"resourceType": "CareTeam"})
    team["name"] = values["name"]
    team["status"] = values["status"]
    team["category"] = [codes.concept(codes.LOINC, *FAMILY_DOCTOR_TEAM)]
    team["managingOrganization"] = [{"reference": f"Organization/{values['organization']}"}]
    participants = []

    def add(role_id: str, role: str) -> None:
        label = codes.TEAM_ROLES[role]
        participants.append(
            {
                "role": [codes.concept(codes.TEAM_ROLE_SYSTEM, role, label, label)],
                "member": {
                    "reference": f"PractitionerRole/{role_id}",
                    "display": names.get(role_id, "").split(" · ")[0],
                },
            }
        )

    add(values["leader"], "leader")
    for key in MEMBER_FIELDS:
        for role_id in values.get(key + "[]", []):
            add(role_id, key)
    team["participant"] = participants
    others = [e for e in team.get("extension") or [] if e.get("url") != codes.SERVICE_AREA_URL]
    areas = [
        {"url": codes.SERVICE_AREA_URL, "valueReference": {"reference": f"Organization/{a}"}}
        for a in values.get("area[]", [])
    ]
    if others or areas:
        team["extension"] = others + areas
    else:
        team.pop("extension", None)
    return team


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE)
    async def listing(request: Request) -> Response:
        require(request, "teams")
        return await team_list(request, BASE, editable=True)

    @router.get(BASE + "/new")
    async def new(request: Request) -> Response:
        require(request, "teams")
        return await _form(request, {"status": "active"}, {}, None)

    @router.get(BASE + "/{tid}")
    async def edit(request: Request, tid: str) -> Response:
        require(request, "teams")
        team = await fhirdata.read(request, "CareTeam", tid)
        if team is None:
            return _missing(request)
        return await _form(request, _values(team), {}, tid)

    @router.post(BASE + "/new")
    async def create(request: Request) -> Response:
        return await _submit(request, None)

    @router.post(BASE + "/{tid}")
    async def update(request: Request, tid: str) -> Response:
        return await _submit(request, tid)

    return router


async def team_list(request: Request, base: str, *, editable: bool) -> Response:
    _ = gettext_for(request)
    query = ListQuery.parse(request, SORTS, ("status", "organization"))
    # CareTeam has no name search parameter in R4: the text search (_content) finds names.
    params: list[tuple[str, str]] = [query.fhir_sort(SORTS)]
    if query.q:
        params.append(("_content", query.q))
    if query.filters.get("status") in ("active", "inactive"):
        params.append(("status", query.filters["status"]))
    page = await fhirdata.search(request, "CareTeam", params, offset=query.offset, count=query.size)
    orgs = await _orgs(request)
    org_names = {f"Organization/{i}": n for i, n in orgs}
    filters = [("status", _("Status"), [("active", _("Active")), ("inactive", _("Inactive"))])]
    partial = request.headers.get("hx-request") == "true"
    return render(
        request,
        "admin/teams_results.html" if partial else "admin/teams.html",
        query=query,
        page=page,
        filters=filters,
        base=base,
        editable=editable,
        org_names=org_names,
        codes=codes,
    )


async def _form(
    request: Request,
    values: dict[str, Any],
    errors: dict[str, str],
    tid: str | None,
    status: int = 200,
) -> Response:
    return render(
        request,
        "admin/form.html",
        status,
        fields=fields(await _orgs(request), await member_choices(request)),
        values=values,
        errors=errors,
        action=f"{BASE}/{tid}" if tid else f"{BASE}/new",
        heading_new=N_("New family-doctor team"),
        heading_edit=N_("Edit family-doctor team"),
        editing=tid is not None,
        back=BASE,
    )


async def _submit(request: Request, tid: str | None) -> Response:
    require(request, "teams")
    _ = gettext_for(request)
    values: dict[str, Any] = dict(await form_data(request))
    lists = await form_lists(request)
    for key in (*MEMBER_FIELDS, "area"):
        values[key + "[]"] = lists.get(key, [])
    check = Validator(values, _)
    check.required("name")
    orgs = dict(await _orgs(request))
    members = dict(await member_choices(request))
    check.choice("organization", orgs)
    check.choice("status", ("active", "inactive"))
    check.choice("leader", members)
    if not values["gp[]"]:
        check.error("gp", _("A team needs at least one general practitioner."))
    for key in MEMBER_FIELDS:
        if any(m not in members for m in values[key + "[]"]):
            check.error(key, _("This choice is not valid."))
    if any(a not in orgs for a in values["area[]"]):
        check.error("area", _("This choice is not valid."))
    allowed = await writable_orgs(request)
    if values.get("organization") in orgs and not may_write(allowed, values["organization"]):
        check.error("organization", _("You may only manage teams of your own institution."))
    existing = None
    if tid is not None:
        existing = await fhirdata.read(request, "CareTeam", tid)
        if existing is None:
            return _missing(request)
    if not check:
        return await _form(request, values, check.errors, tid, 422)
    try:
        await fhirdata.save(
            request, [build_team(values, existing, members)], if_match=_version(values)
        )
    except fhirdata.FhirError as exc:
        check.error("_form", refused(_, exc))
        return await _form(request, values, check.errors, tid, 422)
    flash(request, _("Saved: %(name)s") % {"name": values["name"]})
    from smartmed.portal.pages import see_other

    return see_other(BASE)


def _missing(request: Request) -> Response:
    _ = gettext_for(request)
    return render(
        request, "error.html", 404, title=_("Not found"), message=_("This record does not exist.")
    )
