"""Portal pages of family-doctor contracting (templates in ``portal/templates/contracting``).

======  ===============================  ===============================================
method  path                             what
======  ===============================  ===============================================
GET     /contracting                     resident: my contract, history, pending, share
POST    /contracting/{id}/withdraw       resident: withdraw a pending application
POST    /contracting/{id}/renew          resident or team: renew in one step
POST    /contracting/{id}/terminate      resident or team: end with a reason
GET     /contracting/apply?t=            the application a link offers (prefilled)
POST    /contracting/apply               file it
GET     /contracting/team                team: applications, residents with key groups
POST    /contracting/{id}/review         team: accept / reject with a reason
POST    /contracting/invite              team: invite a resident (link shown and sent)
POST    /contracting/find                team: find the resident to sign in person
                                         (ID number, phone, or name + birth date)
POST    /contracting/in-person           team: sign a resident present in person
GET     /contracting/card                team: my business card with its QR code
(package_pages.py)                       packages, buying, service records, publishing
======  ===============================  ===============================================

Every message shown comes from the templates (Babel catalogue); service errors carry a
``reason`` code that ``contracting/messages.html`` translates.
"""

from __future__ import annotations

from typing import Any

import segno
from fastapi import APIRouter, Request, Response

from smartmed.contracting import api, finder, flows, lifecycle, links, service
from smartmed.fhir.errors import FhirError, Invalid
from smartmed.portal.forms import form_data
from smartmed.portal.nav import require
from smartmed.portal.pages import see_other
from smartmed.portal.render import render
from smartmed.portal.session import get_session

BASE = "/contracting"


def _principal(request: Request) -> Any:
    return request.state.principal


def _qr(url: str) -> str:
    return str(segno.make(url, error="m").svg_inline(scale=4, title="QR"))


def _error(request: Request, exc: FhirError, status: int | None = None) -> Response:
    return render(
        request,
        "contracting/error.html",
        status or exc.status,
        reason=service.reason_of(exc),
    )


def _signature(values: dict[str, str]) -> service.Signature:
    return service.Signature(values.get("typed_name", ""), values.get("agreed") == "true")


async def _people(request: Request, refs: list[str]) -> dict[str, dict[str, Any]]:
    engine = api.engine_of(request)
    out: dict[str, dict[str, Any]] = {}
    async with engine.db.read() as conn:
        for ref in refs:
            try:
                out[ref] = await service.read(
                    engine, conn, ref, ("Patient", "Practitioner", "PractitionerRole", "CareTeam")
                )
            except FhirError:
                out[ref] = {}
    return out


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE)
    async def mine(request: Request) -> Response:
        require(request, "contract")
        who = api.resident(_principal(request))
        engine = api.engine_of(request)
        now = service.now_utc()
        people: list[dict[str, Any]] = []
        async with engine.db.read() as conn:
            members = await service.represented(engine, conn, actor=who, at=now)
            for patient in ([who] if who.startswith("Patient/") else []) + members:
                history = await service.contracts_of(engine, conn, patient=patient)
                current = next((c for c in history if service.is_in_force(c, now)), None)
                renewable = False
                if current is not None:
                    _s, end = service.bounds(current)
                    renewable = end - service.RENEWAL_WINDOW <= now
                people.append(
                    {
                        "patient": patient,
                        "self": patient == who,
                        "current": current,
                        "renewable": renewable,
                        "pending": [c for c in history if c.get("status") == service.PENDING],
                        "history": history,
                    }
                )
        refs = sorted(
            {p["patient"] for p in people}
            | {service.team_of(c) or "" for p in people for c in p["history"]} - {""}
        )
        names = await _people(request, refs)
        share = None
        if any(p["self"] and p["current"] for p in people):
            async with engine.db.read() as conn:
                token, expires = await flows.make_share_link(engine, conn, patient=who, now=now)
            url = str(request.base_url).rstrip("/") + flows.url_for(token)
            share = {"url": url, "qr": _qr(url), "expires": expires}
        return render(
            request,
            "contracting/resident.html",
            people=people,
            names=names,
            share=share,
            done=get_session(request).pop("contracting_done"),
            service=service,
            reasons=service.TERMINATION_REASONS,
        )

    @router.get(BASE + "/apply")
    async def apply_form(request: Request, t: str = "") -> Response:
        require(request, "contract")
        return await _apply_page(request, t, {}, None)

    @router.post(BASE + "/apply")
    async def apply(request: Request) -> Response:
        require(request, "contract")
        values = await form_data(request)
        who = api.resident(_principal(request))
        engine = api.engine_of(request)
        now = service.now_utc()
        try:
            link = flows.open_link(engine, values.get("t", ""), now=now)
        except links.LinkError as exc:
            return _error(request, exc)
        patient = values.get("patient") or who
        try:
            async with engine.db.write() as conn:
                await flows.do_apply_by_link(
                    engine,
                    conn,
                    link=link,
                    patient=patient,
                    applicant=who,
                    signature=_signature(values),
                    now=now,
                )
        except FhirError as exc:
            return await _apply_page(request, values.get("t", ""), values, exc)
        _flash(request, "applied")
        return see_other(BASE)

    async def _apply_page(
        request: Request, token: str, values: dict[str, str], error: FhirError | None
    ) -> Response:
        who = api.resident(_principal(request))
        engine = api.engine_of(request)
        now = service.now_utc()
        try:
            link = flows.open_link(engine, token, now=now)
        except links.LinkError as exc:
            return _error(request, exc)
        async with engine.db.read() as conn:
            members = await service.represented(engine, conn, actor=who, at=now)
        refs = [link.team, *(r for r in (link.doctor,) if r), *members]
        if who.startswith("Patient/"):
            refs.append(who)
        names = await _people(request, refs)
        choices = ([who] if who.startswith("Patient/") else []) + members
        if link.patient:
            choices = [p for p in choices if p == link.patient]
        return render(
            request,
            "contracting/apply.html",
            422 if error is not None else 200,
            link=link,
            token=token,
            names=names,
            choices=choices,
            me=who,
            values=values,
            reason=service.reason_of(error) if error is not None else None,
            service=service,
        )

    @router.post(BASE + "/{cid}/withdraw")
    async def withdraw(request: Request, cid: str) -> Response:
        require(request, "contract")
        who = api.resident(_principal(request))
        return await _act(
            request,
            "withdrawn",
            BASE,
            lambda e, c: service.do_withdraw(e, c, contract_id=cid, actor=who),
        )

    @router.post(BASE + "/{cid}/renew")
    async def renew(request: Request, cid: str) -> Response:
        who, back = _changer(request)
        return await _act(
            request,
            "renewed",
            back,
            lambda e, c: lifecycle.do_renew(e, c, contract_id=cid, actor=who),
        )

    @router.post(BASE + "/{cid}/terminate")
    async def terminate(request: Request, cid: str) -> Response:
        who, back = _changer(request)
        values = await form_data(request)
        return await _act(
            request,
            "terminated",
            back,
            lambda e, c: lifecycle.do_terminate(
                e,
                c,
                contract_id=cid,
                actor=who,
                reason=values.get("reason", ""),
                text=values.get("text") or None,
            ),
        )

    @router.post(BASE + "/{cid}/transfer")
    async def transfer(request: Request, cid: str) -> Response:
        who, back = _changer(request)
        values = await form_data(request)
        return await _act(
            request,
            "transferred",
            back,
            lambda e, c: lifecycle.do_transfer(
                e, c, contract_id=cid, team=values.get("team", ""), actor=who
            ),
        )

    async def _team_view(request: Request, found: dict[str, Any] | None = None) -> Response:
        who = api.team_member(_principal(request))
        engine = api.engine_of(request)
        now = service.now_utc()
        teams: list[dict[str, Any]] = []
        async with engine.db.read() as conn:
            for team in await service.teams_of(engine, conn, who):
                ref = f"CareTeam/{team['id']}"
                teams.append(
                    {
                        "ref": ref,
                        "team": team,
                        "pending": await service.pending_for_team(engine, conn, team=ref),
                        "residents": await api.team_residents(engine, conn, team=ref, at=now),
                    }
                )
            all_teams = await service.search(engine, conn, "CareTeam", [("status", "active")])
        patients = sorted({service.patient_of(c) or "" for t in teams for c in t["pending"]} - {""})
        names = await _people(request, patients)
        return render(
            request,
            "contracting/team.html",
            400 if found and found.get("error") else 200,
            teams=teams,
            names=names,
            service=service,
            all_teams=all_teams,
            found=found,
            invitation=get_session(request).pop("contracting_invite"),
            done=get_session(request).pop("contracting_done"),
            reasons=service.TERMINATION_REASONS,
        )

    @router.get(BASE + "/team")
    async def team_page(request: Request) -> Response:
        require(request, "contracting")
        return await _team_view(request)

    @router.post(BASE + "/find")
    async def find(request: Request) -> Response:
        """The in-person form's resident search (POST: ID numbers stay out of URLs)."""
        require(request, "contracting")
        principal = _principal(request)
        who = api.team_member(principal)
        values = await form_data(request)
        team = values.get("team", "")
        query = finder.Query(
            id_number=values.get("id_number", ""),
            phone=values.get("phone", ""),
            name=values.get("name", ""),
            birth_date=values.get("birth_date", ""),
        )
        shown = {k: values.get(k, "") for k in ("name", "birth_date")}  # never echo ID/phone
        engine = api.engine_of(request)
        try:
            async with engine.db.read() as conn:
                await service.access_team(engine, conn, team=team, member=who)
                results = await finder.find_residents(
                    engine, conn, principal=principal, query=query
                )
        except FhirError as exc:
            if exc.status != 400:
                return _error(request, exc)
            return await _team_view(
                request,
                {"team": team, "results": None, "error": service.reason_of(exc), "shown": shown},
            )
        return await _team_view(
            request,
            {"team": team, "results": [r.json() for r in results], "error": None, "shown": shown},
        )

    @router.post(BASE + "/{cid}/review")
    async def review(request: Request, cid: str) -> Response:
        require(request, "contracting")
        who = api.team_member(_principal(request))
        values = await form_data(request)
        accept = values.get("decision") == "accept"
        if values.get("decision") not in ("accept", "reject"):
            return _error(request, service.refuse(Invalid, "bad-decision", "?"), 400)
        return await _act(
            request,
            "accepted" if accept else "rejected",
            BASE + "/team",
            lambda e, c: service.do_review(
                e, c, contract_id=cid, reviewer=who, accept=accept, reason=values.get("reason")
            ),
        )

    @router.post(BASE + "/in-person")
    async def in_person(request: Request) -> Response:
        require(request, "contracting")
        who = api.team_member(_principal(request))
        values = await form_data(request)
        patient = values.get("patient", "")
        if not patient.startswith("Patient/"):
            patient = f"Patient/{patient}"
        return await _act(
            request,
            "signed",
            BASE + "/team",
            lambda e, c: service.do_sign_in_person(
                e,
                c,
                patient=patient,
                team=values.get("team", ""),
                doctor=who,
                signature=_signature(values),
            ),
        )

    @router.post(BASE + "/invite")
    async def invite(request: Request) -> Response:
        require(request, "contracting")
        who = api.team_member(_principal(request))
        values = await form_data(request)
        patient = values.get("patient", "")
        if not patient.startswith("Patient/"):
            patient = f"Patient/{patient}"
        engine = api.engine_of(request)
        base = str(request.base_url).rstrip("/")
        try:
            async with engine.db.write() as conn:
                token, expires, sent = await flows.do_invite(
                    engine,
                    conn,
                    doctor=who,
                    team=values.get("team", ""),
                    patient=patient,
                    base_url=base,
                    now=service.now_utc(),
                )
        except FhirError as exc:
            return _error(request, exc)
        get_session(request).set(
            "contracting_invite",
            {
                "url": base + flows.url_for(token),
                "patient": patient,
                "sent": bool(sent),
                "expires": expires.isoformat(),
            },
        )
        return see_other(BASE + "/team")

    @router.get(BASE + "/card")
    async def card(request: Request, team: str = "") -> Response:
        require(request, "contracting")
        who = api.team_member(_principal(request))
        engine = api.engine_of(request)
        try:
            async with engine.db.read() as conn:
                token, expires = await flows.make_card_link(
                    engine, conn, doctor=who, team=team, now=service.now_utc()
                )
        except FhirError as exc:
            return _error(request, exc)
        url = str(request.base_url).rstrip("/") + flows.url_for(token)
        names = await _people(request, [who, team])
        return render(
            request,
            "contracting/card.html",
            url=url,
            qr=_qr(url),
            expires=expires,
            doctor=names.get(who, {}),
            team=names.get(team, {}),
            service=service,
        )

    def _changer(request: Request) -> tuple[str, str]:
        principal = _principal(request)
        who = api.person(principal)
        if who.startswith(("Practitioner/", "PractitionerRole/")):
            require(request, "contracting")
            return api.team_member(principal), BASE + "/team"
        require(request, "contract")
        return api.resident(principal), BASE

    from smartmed.contracting import package_pages  # packages and service records

    router.include_router(package_pages.build_router())
    return router


def _flash(request: Request, what: str) -> None:
    get_session(request).set("contracting_done", what)


async def _act(request: Request, what: str, back: str, action: Any) -> Response:
    engine = api.engine_of(request)
    try:
        async with engine.db.write() as conn:
            await action(engine, conn)
    except FhirError as exc:
        return _error(request, exc)
    _flash(request, what)
    return see_other(back)
