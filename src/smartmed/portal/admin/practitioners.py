"""Staff: FHIR Practitioner (name, gender, birth date, qualification) and its
PractitionerRole (institution or department, staff role, specialty, practice site)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from smartmed.portal import fhirdata
from smartmed.portal.admin import codes
from smartmed.portal.admin.fields import N_, Field
from smartmed.portal.admin.fields import version as _version
from smartmed.portal.admin.listing import ListQuery
from smartmed.portal.admin.scope import may_write, writable_orgs
from smartmed.portal.forms import Validator, form_data, refused
from smartmed.portal.nav import require
from smartmed.portal.render import flash, gettext_for, render

SORTS = {"name": "family", "updated": "_lastUpdated"}
BASE = "/admin/practitioners"


async def org_choices(request: Request) -> list[tuple[str, str]]:
    """Every organisation, departments after their institution's name."""
    items = await fhirdata.search_all(request, "Organization", [("_sort", "name")], 5000)
    names = {o["id"]: str(o.get("name", o["id"])) for o in items}
    return [(o["id"], names[o["id"]]) for o in items]


async def site_choices(request: Request) -> list[tuple[str, str]]:
    items = await fhirdata.search_all(request, "Location", [("_sort", "name")], 5000)
    return [(loc["id"], str(loc.get("name", loc["id"]))) for loc in items]


def fields(orgs: list[tuple[str, str]], sites: list[tuple[str, str]]) -> list[Field]:
    specialties = tuple((c, lbl) for c, (_s, _d, lbl) in codes.SPECIALTIES.items())
    return [
        Field("family", "Family name", required=True, width="col-6 col-md-3"),
        Field("given", "Given name", required=True, width="col-6 col-md-3"),
        Field(
            "gender", "Gender", "select", True, tuple(codes.GENDERS.items()), width="col-6 col-md-3"
        ),
        Field("birth_date", "Date of birth", "date", width="col-6 col-md-3"),
        Field("code", "Staff number", width="col-6 col-md-3"),
        Field("phone", "Phone", "tel", width="col-6 col-md-3"),
        Field(
            "qualification", "Qualification", "select", True, tuple(codes.QUALIFICATIONS.items())
        ),
        Field("organization", "Institution or department", "select", True, tuple(orgs), False),
        Field("role", "Staff role", "select", True, tuple(codes.STAFF_ROLES.items())),
        Field("specialty", "Specialty", "select", False, specialties),
        Field("site", "Practice site", "select", False, tuple(sites), False),
        Field("active", "Active", "checkbox", width="col-12"),
    ]


def validate(
    values: dict[str, str], check: Validator, orgs: dict[str, str], sites: dict[str, str]
) -> None:
    check.required("family", 50)
    check.required("given", 50)
    check.choice("gender", codes.GENDERS)
    check.past_date("birth_date")
    check.optional("code", 64)
    check.phone("phone")
    check.choice("qualification", codes.QUALIFICATIONS)
    check.choice("organization", orgs)
    check.choice("role", codes.STAFF_ROLES)
    check.choice("specialty", codes.SPECIALTIES, required=False)
    check.choice("site", sites, required=False)


def build_resources(
    values: dict[str, str], practitioner: dict[str, Any] | None, role: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The Practitioner and its PractitionerRole (the role refers to the first by ``#0``)."""
    body: dict[str, Any] = dict(practitioner or {"resourceType": "Practitioner"})
    body["active"] = values.get("active", "true") == "true"
    text = values["family"] + values["given"]
    body["name"] = [
        {"use": "official", "text": text, "family": values["family"], "given": [values["given"]]}
    ]
    body["gender"] = values["gender"]
    if values.get("birth_date"):
        body["birthDate"] = values["birth_date"]
    else:
        body.pop("birthDate", None)
    if values.get("phone"):
        body["telecom"] = [{"system": "phone", "value": values["phone"], "use": "work"}]
    else:
        body.pop("telecom", None)
    if values.get("code"):
        body["identifier"] = [
            {"use": "official", "system": codes.PRACTITIONER_SYSTEM, "value": values["code"]}
        ]
    qualification = values["qualification"]
    body["qualification"] = [
        {"code": codes.concept(codes.QUALIFICATION_SYSTEM, qualification, qualification)}
    ]
    role_body: dict[str, Any] = dict(role or {"resourceType": "PractitionerRole"})
    role_body["active"] = body["active"]
    role_body["practitioner"] = {
        "reference": f"Practitioner/{body['id']}" if body.get("id") else "#0",
        "display": text,
    }
    role_body["organization"] = {"reference": f"Organization/{values['organization']}"}
    role_body["code"] = [
        codes.concept(codes.HL7_PRACTITIONER_ROLE, values["role"], values["role"].capitalize())
    ]
    if values.get("specialty"):
        system, display, _label = codes.SPECIALTIES[values["specialty"]]
        role_body["specialty"] = [codes.concept(system, values["specialty"], display)]
    else:
        role_body.pop("specialty", None)
    if values.get("site"):
        role_body["location"] = [{"reference": f"Location/{values['site']}"}]
    else:
        role_body.pop("location", None)
    return [body, role_body]


def _values(practitioner: dict[str, Any], role: dict[str, Any] | None) -> dict[str, Any]:
    name: dict[str, Any] = next(iter(practitioner.get("name") or []), {})
    role = role or {}
    org = (role.get("organization") or {}).get("reference", "")
    first_site: dict[str, Any] = next(iter(role.get("location") or []), {})
    site = str(first_site.get("reference", ""))
    specialty = None
    for concept in role.get("specialty") or []:
        for coding in concept.get("coding") or []:
            if coding.get("code") in codes.SPECIALTIES:
                specialty = coding["code"]
    return {
        "version": str((practitioner.get("meta") or {}).get("versionId", "")),
        "family": name.get("family", ""),
        "given": "".join(name.get("given") or []),
        "gender": practitioner.get("gender", ""),
        "birth_date": practitioner.get("birthDate", ""),
        "code": next((i.get("value", "") for i in practitioner.get("identifier") or []), ""),
        "phone": next((t.get("value", "") for t in practitioner.get("telecom") or []), ""),
        "qualification": next(
            (
                codes.code_in([q.get("code", {})], codes.QUALIFICATION_SYSTEM)
                for q in practitioner.get("qualification") or []
            ),
            "",
        )
        or "",
        "organization": org.split("/", 1)[1] if "/" in org else "",
        "role": codes.code_in(role.get("code"), codes.HL7_PRACTITIONER_ROLE) or "",
        "specialty": specialty or "",
        "site": site.split("/", 1)[1] if "/" in site else "",
        "active": "true" if practitioner.get("active", True) else "",
    }


async def roles_by_practitioner(
    request: Request, practitioners: list[dict[str, Any]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """PractitionerRoles of each practitioner, and the names of their organisations."""
    ids = [p["id"] for p in practitioners]
    roles: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    org_names: dict[str, str] = {}
    if not ids:
        return roles, org_names
    found = await fhirdata.search(
        request,
        "PractitionerRole",
        [
            ("practitioner", ",".join(f"Practitioner/{i}" for i in ids)),
            ("_include", "PractitionerRole:organization"),
        ],
        count=500,
    )
    for role in found.items:
        ref = (role.get("practitioner") or {}).get("reference", "")
        roles.setdefault(ref.split("/", 1)[-1], []).append(role)
    for key, org in found.included.items():
        org_names[key] = str(org.get("name", key))
    return roles, org_names


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE)
    async def listing(request: Request) -> Response:
        require(request, "practitioners")
        return await practitioner_list(request, BASE, editable=True)

    @router.get(BASE + "/new")
    async def new(request: Request) -> Response:
        require(request, "practitioners")
        return await _form(request, {"active": "true"}, {}, None)

    @router.get(BASE + "/{pid}")
    async def edit(request: Request, pid: str) -> Response:
        require(request, "practitioners")
        practitioner = await fhirdata.read(request, "Practitioner", pid)
        if practitioner is None:
            return _missing(request)
        role = await _first_role(request, pid)
        return await _form(request, _values(practitioner, role), {}, pid)

    @router.post(BASE + "/new")
    async def create(request: Request) -> Response:
        return await _submit(request, None)

    @router.post(BASE + "/{pid}")
    async def update(request: Request, pid: str) -> Response:
        return await _submit(request, pid)

    return router


async def practitioner_list(request: Request, base: str, *, editable: bool) -> Response:
    _ = gettext_for(request)
    query = ListQuery.parse(request, SORTS, ("organization", "gender", "active"))
    params: list[tuple[str, str]] = [query.fhir_sort(SORTS)]
    if query.q:
        params.append(("name:contains", query.q))
    if "organization" in query.filters:
        params.append(
            (
                "_has:PractitionerRole:practitioner:organization",
                f"Organization/{query.filters['organization']}",
            )
        )
    if query.filters.get("gender") in codes.GENDERS:
        params.append(("gender", query.filters["gender"]))
    if query.filters.get("active") in ("true", "false"):
        params.append(("active", query.filters["active"]))
    page = await fhirdata.search(
        request, "Practitioner", params, offset=query.offset, count=query.size
    )
    roles, org_names = await roles_by_practitioner(request, page.items)
    orgs = await org_choices(request)
    filters = [
        ("organization", _("Institution or department"), orgs),
        ("gender", _("Gender"), [(c, _(lbl)) for c, lbl in codes.GENDERS.items()]),
        ("active", _("Status"), [("true", _("Active")), ("false", _("Inactive"))]),
    ]
    partial = request.headers.get("hx-request") == "true"
    return render(
        request,
        "admin/practitioners_results.html" if partial else "admin/practitioners.html",
        query=query,
        page=page,
        roles=roles,
        org_names=org_names,
        filters=filters,
        base=base,
        editable=editable,
        codes=codes,
    )


async def _first_role(request: Request, pid: str) -> dict[str, Any] | None:
    found = await fhirdata.search(
        request, "PractitionerRole", [("practitioner", f"Practitioner/{pid}")], count=1
    )
    return found.items[0] if found.items else None


async def _form(
    request: Request,
    values: dict[str, Any],
    errors: dict[str, str],
    pid: str | None,
    status: int = 200,
) -> Response:
    return render(
        request,
        "admin/form.html",
        status,
        fields=fields(await org_choices(request), await site_choices(request)),
        values=values,
        errors=errors,
        action=f"{BASE}/{pid}" if pid else f"{BASE}/new",
        heading_new=N_("New staff member"),
        heading_edit=N_("Edit staff member"),
        editing=pid is not None,
        back=BASE,
    )


async def _submit(request: Request, pid: str | None) -> Response:
    require(request, "practitioners")
    _ = gettext_for(request)
    values = await form_data(request)
    check = Validator(values, _)
    orgs = dict(await org_choices(request))
    sites = dict(await site_choices(request))
    validate(values, check, orgs, sites)
    allowed = await writable_orgs(request)
    if values.get("organization") in orgs and not may_write(allowed, values["organization"]):
        check.error("organization", _("You may only manage staff of your own institution."))
    practitioner, role = None, None
    if pid is not None:
        practitioner = await fhirdata.read(request, "Practitioner", pid)
        if practitioner is None:
            return _missing(request)
        role = await _first_role(request, pid)
    if not check:
        return await _form(request, values, check.errors, pid, 422)
    try:
        await fhirdata.save(
            request, build_resources(values, practitioner, role), if_match=_version(values)
        )
    except fhirdata.FhirError as exc:
        check.error("_form", refused(_, exc))
        return await _form(request, values, check.errors, pid, 422)
    flash(request, _("Saved: %(name)s") % {"name": values["family"] + values["given"]})
    from smartmed.portal.pages import see_other

    return see_other(BASE)


def _missing(request: Request) -> Response:
    _ = gettext_for(request)
    return render(
        request, "error.html", 404, title=_("Not found"), message=_("This record does not exist.")
    )
