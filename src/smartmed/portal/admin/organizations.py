"""Organisations (city → county → township → village; hospital, centre, clinic, pharmacy,
shared exam centre) and departments, as FHIR Organization (``partOf``) plus a Location.

An institution gets a Location (its site: name, address, ``managingOrganization``) in
the same transaction; a department is an Organization of kind ``department`` whose
``partOf`` is its institution.
"""

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

SORTS = {"name": "name", "updated": "_lastUpdated"}


async def institutions(request: Request) -> list[tuple[str, str]]:
    """(id, name) of every organisation that is not a department, by name."""
    items = await fhirdata.search_all(request, "Organization", [("_sort", "name")], 5000)
    return [
        (o["id"], str(o.get("name", o["id"])))
        for o in items
        if codes.org_kind(o) != codes.DEPARTMENT_KIND
    ]


def _org_fields(parents: list[tuple[str, str]], department: bool) -> list[Field]:
    if department:
        return [
            Field("name", "Name", required=True),
            Field(
                "parent",
                "Institution",
                "select",
                required=True,
                options=tuple(parents),
                translate=False,
            ),
            Field("specialty", "Specialty", "select", options=_specialties()),
            Field("phone", "Phone", "tel"),
            Field("active", "Active", "checkbox", width="col-12"),
        ]
    return [
        Field("name", "Name", required=True),
        Field("kind", "Kind", "select", required=True, options=tuple(codes.ORG_KINDS.items())),
        Field("level", "Administrative level", "select", True, tuple(codes.LEVELS.items())),
        Field("parent", "Part of", "select", options=tuple(parents), translate=False),
        Field("code", "Institution code"),
        Field("phone", "Phone", "tel"),
        Field("address", "Address", width="col-12"),
        Field("active", "Active", "checkbox", width="col-12"),
    ]


def _specialties() -> tuple[tuple[str, str], ...]:
    return tuple((code, label) for code, (_s, _d, label) in codes.SPECIALTIES.items())


def _values(org: dict[str, Any]) -> dict[str, Any]:
    parent = (org.get("partOf") or {}).get("reference", "")
    phone = next((t.get("value", "") for t in org.get("telecom") or []), "")
    address: dict[str, Any] = next((a for a in org.get("address") or []), {})
    ident = next(
        (
            i.get("value", "")
            for i in org.get("identifier") or []
            if i.get("system") == codes.ORG_ID_SYSTEM
        ),
        "",
    )
    return {
        "version": str((org.get("meta") or {}).get("versionId", "")),
        "name": org.get("name", ""),
        "kind": codes.org_kind(org) or "",
        "level": codes.code_in(org.get("type"), codes.ORG_LEVEL_SYSTEM) or "",
        "specialty": codes.code_in(org.get("type"), codes.SNOMED)
        or codes.code_in(org.get("type"), codes.SPECIALTY_SYSTEM)
        or "",
        "parent": parent.split("/", 1)[1] if "/" in parent else "",
        "code": ident,
        "phone": phone,
        "address": address.get("text") or " ".join(address.get("line") or []),
        "active": "true" if org.get("active", True) else "",
    }


def _build(
    values: dict[str, str], department: bool, existing: dict[str, Any] | None
) -> dict[str, Any]:
    org: dict[str, Any] = dict(existing or {"resourceType": "Organization"})
    org["name"] = values["name"]
    org["active"] = values.get("active") == "true"
    if department:
        types = [codes.concept(codes.HL7_ORG_TYPE, "dept", "Hospital Department")]
        types.append(
            codes.concept(codes.ORG_KIND_SYSTEM, codes.DEPARTMENT_KIND, "临床科室", "临床科室")
        )
        if values.get("specialty"):
            system, display, _label = codes.SPECIALTIES[values["specialty"]]
            types.append(codes.concept(system, values["specialty"], display))
    else:
        hl7 = codes.HL7_KIND.get(values["kind"], ("prov", "Healthcare Provider"))
        types = [
            codes.concept(codes.HL7_ORG_TYPE, *hl7),
            codes.concept(codes.ORG_KIND_SYSTEM, values["kind"], values["kind"]),
            codes.concept(codes.ORG_LEVEL_SYSTEM, values["level"], values["level"]),
        ]
        if values.get("code"):
            others = [
                i for i in org.get("identifier") or [] if i.get("system") != codes.ORG_ID_SYSTEM
            ]
            org["identifier"] = [
                {"use": "official", "system": codes.ORG_ID_SYSTEM, "value": values["code"]},
                *others,
            ]
        if values.get("address"):
            org["address"] = [
                {"use": "work", "text": values["address"], "line": [values["address"]]}
            ]
        else:
            org.pop("address", None)
    org["type"] = types
    if values.get("parent"):
        org["partOf"] = {"reference": f"Organization/{values['parent']}"}
    else:
        org.pop("partOf", None)
    if values.get("phone"):
        org["telecom"] = [{"system": "phone", "value": values["phone"], "use": "work"}]
    else:
        org.pop("telecom", None)
    return org


async def org_list(request: Request, *, department: bool, base: str, editable: bool) -> Response:
    _ = gettext_for(request)
    filters = ("parent",) if department else ("kind", "level", "active")
    query = ListQuery.parse(request, SORTS, filters)
    params: list[tuple[str, str]] = [query.fhir_sort(SORTS)]
    if query.q:
        params.append(("name:contains", query.q))
    if department:
        params.append(("type", f"{codes.ORG_KIND_SYSTEM}|{codes.DEPARTMENT_KIND}"))
        if "parent" in query.filters:
            params.append(("partof", f"Organization/{query.filters['parent']}"))
    else:
        params.append(("type:not", f"{codes.ORG_KIND_SYSTEM}|{codes.DEPARTMENT_KIND}"))
        if "kind" in query.filters:
            params.append(("type", f"{codes.ORG_KIND_SYSTEM}|{query.filters['kind']}"))
        if "level" in query.filters:
            params.append(("type", f"{codes.ORG_LEVEL_SYSTEM}|{query.filters['level']}"))
        if query.filters.get("active") in ("true", "false"):
            params.append(("active", query.filters["active"]))
    params.append(("_include", "Organization:partof"))
    page = await fhirdata.search(
        request, "Organization", params, offset=query.offset, count=query.size
    )
    parents = await institutions(request)
    if department:
        filter_specs = [("parent", _("Institution"), parents)]
    else:
        filter_specs = [
            ("kind", _("Kind"), [(c, _(lbl)) for c, lbl in codes.ORG_KINDS.items()]),
            ("level", _("Level"), [(c, _(lbl)) for c, lbl in codes.LEVELS.items()]),
            ("active", _("Status"), [("true", _("Active")), ("false", _("Inactive"))]),
        ]
    return render(
        request,
        "admin/organizations_results.html"
        if request.headers.get("hx-request") == "true"
        else "admin/organizations.html",
        query=query,
        page=page,
        filters=filter_specs,
        department=department,
        base=base,
        editable=editable,
        kinds=codes.ORG_KINDS,
        levels=codes.LEVELS,
        specialties=codes.SPECIALTIES,
        codes=codes,
    )


async def _site(
    request: Request, org_id: str | None, values: dict[str, str]
) -> list[dict[str, Any]]:
    """The institution's main Location, made for a new institution and kept in step with
    its name, address and status on every save."""
    location: dict[str, Any] = {
        "resourceType": "Location",
        "mode": "instance",
        "physicalType": codes.concept(
            "http://terminology.hl7.org/CodeSystem/location-physical-type", "si", "Site"
        ),
        "managingOrganization": {"reference": "#0"},
    }
    if org_id is not None:
        found = await fhirdata.search(
            request, "Location", [("organization", f"Organization/{org_id}")], count=1
        )
        if found.items:
            location = found.items[0]
    location["name"] = values["name"]
    location["status"] = "active" if values.get("active") == "true" else "inactive"
    if values.get("address"):
        location["address"] = {"use": "work", "text": values["address"]}
    else:
        location.pop("address", None)
    return [location]


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    for department in (False, True):
        _routes(router, department)
    return router


def _routes(router: APIRouter, department: bool) -> None:
    key = "departments" if department else "organizations"
    base = f"/admin/{key}"

    async def listing(request: Request) -> Response:
        require(request, key)
        return await org_list(request, department=department, base=base, editable=True)

    async def form_page(request: Request, org_id: str | None = None) -> Response:
        require(request, key)
        values: dict[str, Any] = {"active": "true"}
        if org_id is not None:
            org = await fhirdata.read(request, "Organization", org_id)
            if org is None:
                return _not_found(request)
            values = _values(org)
        return await _render_form(request, values, {}, org_id)

    async def _render_form(
        request: Request,
        values: dict[str, Any],
        errors: dict[str, str],
        org_id: str | None,
        status: int = 200,
    ) -> Response:
        parents = [p for p in await institutions(request) if p[0] != org_id]
        return render(
            request,
            "admin/form.html",
            status,
            fields=_org_fields(parents, department),
            values=values,
            errors=errors,
            action=f"{base}/{org_id}" if org_id else f"{base}/new",
            heading_new=N_("New department") if department else N_("New organisation"),
            heading_edit=N_("Edit department") if department else N_("Edit organisation"),
            editing=org_id is not None,
            back=base,
        )

    async def submit(request: Request, org_id: str | None = None) -> Response:
        require(request, key)
        _ = gettext_for(request)
        values = await form_data(request)
        check = Validator(values, _)
        check.required("name")
        parents = dict(await institutions(request))
        if department:
            check.choice("parent", parents)
            check.choice("specialty", codes.SPECIALTIES, required=False)
        else:
            check.choice("kind", codes.ORG_KINDS)
            check.choice("level", codes.LEVELS)
            check.choice("parent", parents, required=False)
            check.optional("code", 64)
            check.optional("address", 300)
        check.phone("phone")
        if org_id and values.get("parent") == org_id:
            check.error("parent", _("An organisation cannot be part of itself."))
        allowed = await writable_orgs(request)
        existing = None
        if org_id is not None:
            existing = await fhirdata.read(request, "Organization", org_id)
            if existing is None:
                return _not_found(request)
            if not may_write(allowed, org_id):
                check.error("name", _("You may not change this organisation."))
        if not may_write(allowed, values.get("parent") or None) and allowed is not None:
            check.error("parent", _("You may only add organisations under your own institution."))
        if not check:
            return await _render_form(request, values, check.errors, org_id, 422)
        org = _build(values, department, existing)
        batch = [org]
        if not department:
            batch += await _site(request, org_id, values)
        try:
            await fhirdata.save(request, batch, if_match=_version(values))
        except fhirdata.FhirError as exc:
            check.error("_form", refused(_, exc))
            return await _render_form(request, values, check.errors, org_id, 422)
        flash(request, _("Saved: %(name)s") % {"name": values["name"]})
        from smartmed.portal.pages import see_other

        return see_other(base)

    router.add_api_route(base, listing, methods=["GET"])
    router.add_api_route(f"{base}/new", form_page, methods=["GET"])
    router.add_api_route(f"{base}/new", submit, methods=["POST"])
    router.add_api_route(base + "/{org_id}", form_page, methods=["GET"])
    router.add_api_route(base + "/{org_id}", submit, methods=["POST"])


def _not_found(request: Request) -> Response:
    _ = gettext_for(request)
    return render(
        request, "error.html", 404, title=_("Not found"), message=_("This record does not exist.")
    )
