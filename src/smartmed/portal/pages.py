"""The portal shell: landing page, login/logout, role-based home, language and role switch.

========  =====================  ==============================================
method    path                   what
========  =====================  ==============================================
GET       /                      landing page (anonymous) or the role's home
GET       /login                 start the OIDC login (code + PKCE) -> /oauth/authorize
GET       /auth/callback         finish it: code redeemed, ID token checked, session
POST      /logout                revoke the session's token, forget the session
POST      /logout-everywhere     also end the account's provider sessions and refresh tokens
POST      /lang                  language: session and the account's FHIR ``communication``
POST      /role                  act in another of the account's roles
GET       /me                    the resident's own details
========  =====================  ==============================================
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from smartmed.identity.loginpage import LANG_COOKIE, SESSION_COOKIE
from smartmed.identity.principal import Role
from smartmed.identity.service import get_identity
from smartmed.portal import fhirdata, i18n, sso
from smartmed.portal.admin.codes import GENDERS
from smartmed.portal.forms import form_data
from smartmed.portal.nav import ADMINS, entries_for, require
from smartmed.portal.render import gettext_for, render
from smartmed.portal.session import get_session

log = structlog.get_logger("smartmed.portal")


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, 303, headers={"Cache-Control": "no-store"})


def remember_language(response: Response, locale: str) -> None:
    """Tell the provider's login page (on ``/oauth``) which language was chosen."""
    response.set_cookie(
        LANG_COOKIE, locale, max_age=365 * 86400, httponly=True, secure=True, samesite="lax"
    )


async def preferred_language(request: Request, fhir_user: str | None) -> str | None:
    """The language in the communication of the account's FHIR resource, if any."""
    if not fhir_user or "/" not in fhir_user:
        return None
    type_, id_ = fhir_user.split("/", 1)
    body = await fhirdata.read(request, type_, id_)
    if body is None:
        return None
    items = body.get("communication") or []
    concepts = [
        (item.get("language") if type_ in ("Patient", "RelatedPerson") else item, item)
        for item in items
        if isinstance(item, dict)
    ]
    concepts.sort(key=lambda pair: not pair[1].get("preferred", False))
    for concept, _item in concepts:
        for coding in (concept or {}).get("coding") or []:
            found = i18n.normalize(coding.get("code"))
            if found:
                return found
    return None


async def store_language(request: Request, fhir_user: str | None, locale: str) -> None:
    """Record the language as the preferred communication of the account's resource."""
    if not fhir_user or "/" not in fhir_user:
        return
    type_, id_ = fhir_user.split("/", 1)
    if type_ not in ("Patient", "RelatedPerson", "Practitioner"):
        return
    body = await fhirdata.read(request, type_, id_)
    if body is None:
        return
    tag = i18n.TAGS[locale]
    concept = {
        "coding": [{"system": "urn:ietf:bcp:47", "code": tag}],
        "text": "中文" if locale == "zh_CN" else "English",
    }
    if type_ == "Practitioner":
        others = [c for c in body.get("communication") or [] if i18n.normalize(_code(c)) is None]
        body["communication"] = [concept, *others]
    else:
        kept = [
            {k: v for k, v in c.items() if k != "preferred"}
            for c in body.get("communication") or []
            if i18n.normalize(_code(c.get("language") or {})) != locale
        ]
        body["communication"] = [{"language": concept, "preferred": True}, *kept]
    await fhirdata.save(request, [body])


def _code(concept: dict[str, Any]) -> str | None:
    for coding in concept.get("coding") or []:
        return str(coding.get("code"))
    return None


def build_shell_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def home(request: Request) -> Response:
        session = get_session(request)
        if session.account is None:
            return render(request, "landing.html")
        role = session.active_role
        context: dict[str, Any] = {"tiles": [e for e in entries_for(role) if not e.planned]}
        if role in (Role.RESIDENT, Role.FAMILY_REPRESENTATIVE):
            context["person"] = await _person(request, session.account.fhir_user)
            context["doctor"] = await family_doctor(request, context["person"])
        if role in ADMINS:
            context["stats"] = await _stats(request)
        return render(request, "home.html", **context)

    @router.get("/login")
    async def login(request: Request, next: str = "/") -> Response:  # noqa: A002
        session = get_session(request)
        if session.account is not None:
            return see_other(sso.safe_next(next))
        return see_other(await sso.start_login(request, session, next))

    @router.get("/auth/callback")
    async def callback(request: Request) -> Response:
        session = get_session(request)
        _ = gettext_for(request)
        try:
            target = await sso.finish_login(request, session)
        except sso.LoginFailed:
            return render(
                request,
                "error.html",
                400,
                title=_("Login failed"),
                message=_("The login could not be completed. Please try again."),
            )
        account = await get_identity(request.app).accounts.get(str(session.get("acc")))
        if account is not None and not session.get("lang"):
            lang = await preferred_language(request, account.fhir_user)
            if lang:
                session.set("lang", lang)
        response = see_other(target)
        if session.get("lang"):
            remember_language(response, str(session.get("lang")))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await sso.logout(request, get_session(request))
        response = see_other("/")
        # The provider's own login session (cookie on /oauth): logging out of the portal
        # on a shared computer must not leave the next person signed in.
        response.delete_cookie(SESSION_COOKIE, path="/oauth", secure=True, httponly=True)
        return response

    @router.post("/logout-everywhere")
    async def logout_everywhere(request: Request) -> Response:
        session = get_session(request)
        if session.account is not None:
            await get_identity(request.app).accounts.logout_everywhere(session.account.id)
        await sso.logout(request, session)
        response = see_other("/")
        response.delete_cookie(SESSION_COOKIE, path="/oauth", secure=True, httponly=True)
        return response

    @router.post("/lang")
    async def language(request: Request) -> Response:
        form = await form_data(request)
        session = get_session(request)
        locale = i18n.normalize(form.get("lang"))
        if locale:
            session.set("lang", locale)
            if session.account is not None:
                try:
                    await store_language(request, session.account.fhir_user, locale)
                except fhirdata.FhirError:
                    # The session keeps the choice; the record is left as it was.
                    log.warning("language not stored on the account's record")
        response = see_other(sso.safe_next(form.get("next")))
        if locale:
            remember_language(response, locale)
        return response

    @router.post("/role")
    async def switch_role(request: Request) -> Response:
        form = await form_data(request)
        session = get_session(request)
        if session.account is not None:
            held = {r.role.value for r in session.account.roles}
            if form.get("role") in held:
                session.set("role", form["role"])
        return see_other("/")

    @router.get("/me")
    async def me(request: Request) -> Response:
        require(request, "me")
        session = get_session(request)
        assert session.account is not None
        person = await _person(request, session.account.fhir_user)
        doctor = await family_doctor(request, person)
        return render(request, "me.html", person=person, genders=GENDERS, doctor=doctor)

    return router


async def _person(request: Request, fhir_user: str | None) -> dict[str, Any] | None:
    if not fhir_user or "/" not in fhir_user:
        return None
    type_, id_ = fhir_user.split("/", 1)
    return await fhirdata.read(request, type_, id_)


async def family_doctor(request: Request, patient: dict[str, Any] | None) -> dict[str, Any] | None:
    """The resident's family doctor (``Patient.generalPractitioner``), their clinic
    (``managingOrganization``) and the family-doctor team (CareTeam) they belong to."""
    if not patient or patient.get("resourceType") != "Patient":
        return None
    first: dict[str, Any] = next(iter(patient.get("generalPractitioner") or []), {})
    ref = first.get("reference", "")
    kind, _sep, gp_id = str(ref).partition("/")
    if kind not in ("Practitioner", "PractitionerRole") or not gp_id:
        return None
    role_ids = [gp_id] if kind == "PractitionerRole" else []
    practitioner: dict[str, Any] | None = None
    if kind == "PractitionerRole":
        role = await fhirdata.read(request, "PractitionerRole", gp_id)
        ref = ((role or {}).get("practitioner") or {}).get("reference", "")
        kind, _sep, gp_id = str(ref).partition("/")
    if kind == "Practitioner":
        practitioner = await fhirdata.read(request, "Practitioner", gp_id)
        roles = await fhirdata.search_all(
            request, "PractitionerRole", [("practitioner", f"Practitioner/{gp_id}")], 20
        )
        role_ids += [r["id"] for r in roles]
    team = None
    if role_ids:
        members = ",".join(f"PractitionerRole/{i}" for i in role_ids)
        teams = await fhirdata.search_all(
            request, "CareTeam", [("participant", members), ("status", "active")], 1
        )
        team = teams[0] if teams else None
    clinic_ref = (patient.get("managingOrganization") or {}).get("reference", "")
    clinic = None
    if str(clinic_ref).startswith("Organization/"):
        clinic = await fhirdata.read(request, "Organization", clinic_ref.split("/", 1)[1])
    return {"practitioner": practitioner, "team": team, "clinic": clinic}


async def _stats(request: Request) -> dict[str, Any]:
    """Counts for the administrator's home, and institutions by kind for the chart."""
    counts = {}
    for type_ in ("Organization", "Practitioner", "PractitionerRole", "CareTeam", "Location"):
        counts[type_] = (await fhirdata.search(request, type_, [], count=0)).total
    from smartmed.portal.admin.codes import ORG_KIND_SYSTEM, ORG_KINDS

    _ = gettext_for(request)
    labels, values = [], []
    for code, label in ORG_KINDS.items():
        found = await fhirdata.search(
            request, "Organization", [("type", f"{ORG_KIND_SYSTEM}|{code}")], count=0
        )
        if found.total:
            labels.append(_(label))
            values.append(found.total)
    return {"counts": counts, "chart": {"labels": labels, "values": values, "name": ""}}
