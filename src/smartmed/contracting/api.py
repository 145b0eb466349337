"""HTTP API of family-doctor contracting (JSON in, FHIR Contract out; errors as
OperationOutcome).

======  ==========================================  ==========================================
method  path (under /api/contracting)               who and what
======  ==========================================  ==========================================
GET     /me                                         resident: contract in force, pending
                                                    applications, history, members they sign for
POST    /applications                               resident or representative: apply to a team
GET     /links/{token}                              anyone signed in: what a link offers
POST    /applications/by-link                       apply through a card, invitation or share link
POST    /contracts/{id}/withdraw                    applicant: withdraw a pending application
POST    /contracts/{id}/review                      team member: accept, or reject with a reason
POST    /contracts/{id}/renew                       resident, representative or team member
POST    /contracts/{id}/transfer                    same: move to another team now
POST    /contracts/{id}/terminate                   same: end now with a reason
POST    /in-person                                  team member: sign a resident present in person
POST    /residents/search                           team member: find that resident (ID number,
                                                    phone, or name + birth date; masked)
POST    /invitations                                team member: invite a resident (link, notify)
GET     /card?team=                                 team member: their business-card link
POST    /share                                      resident with a contract: a share link
GET     /team/applications?team=                    team member: applications to review
GET     /team/residents?team=                       team member: contracted residents + key groups
(packages_api.py)                                   packages, choosing/buying one, service records
======  ==========================================  ==========================================

The caller is a bearer access token or the portal session (whose unsafe requests need
the CSRF token, as portal forms do). A caller acts as their FHIR identity (``fhirUser``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting import finder, flows, lifecycle, packages, populations, service
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Forbidden, Unauthorized
from smartmed.identity.principal import Principal, Role
from smartmed.identity.service import get_identity

PREFIX = "/api/contracting"
TEAM_ROLES = frozenset({Role.FAMILY_DOCTOR, Role.NURSE, Role.PUBLIC_HEALTH_WORKER})
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


async def caller(request: Request) -> Principal:
    """The bearer token's principal, else the portal session's (CSRF on unsafe methods)."""
    header = request.headers.get("authorization")
    if header is None:
        principal = getattr(request.state, "principal", None)
        if not isinstance(principal, Principal):
            raise Unauthorized("sign in to the portal or send a bearer access token", error=None)
        if request.method not in _SAFE:
            from smartmed.portal import csrf_protect

            await csrf_protect(request)
        return principal
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    principal = await get_identity(request.app).principal(request, token.strip())
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(caller)]


def person(principal: Principal) -> str:
    if not principal.fhir_user or "/" not in principal.fhir_user:
        raise Forbidden("this account is not linked to a person (no fhirUser)")
    return principal.fhir_user


def resident(principal: Principal) -> str:
    """A resident or family representative acting as their Patient or RelatedPerson."""
    who = person(principal)
    if not who.startswith(("Patient/", "RelatedPerson/")):
        raise Forbidden("only residents and family representatives may do this")
    return who


def team_member(principal: Principal) -> str:
    """A family doctor, nurse or public-health worker acting as their Practitioner."""
    who = person(principal)
    if not any(r.role in TEAM_ROLES for r in principal.roles) or not who.startswith(
        ("Practitioner/", "PractitionerRole/")
    ):
        raise Forbidden("only members of a family-doctor team may do this")
    return who


def changer(principal: Principal) -> str:
    who = person(principal)
    if who.startswith(("Practitioner/", "PractitionerRole/")):
        return team_member(principal)
    return resident(principal)


def engine_of(request: Request) -> FhirEngine:
    engine: FhirEngine = request.app.state.fhir
    return engine


class SignatureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    typedName: str = Field(min_length=1, max_length=100, description="the signer's full name")
    agreed: bool = Field(description="the signer agrees to the contract terms")

    def value(self) -> service.Signature:
        return service.Signature(self.typedName, self.agreed)


Ref = Field(default=None, pattern=r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$", max_length=100)


class ApplicationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str = Field(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")
    patient: str | None = Field(default=None, pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")
    signature: SignatureIn
    package: str | None = Ref


class LinkApplicationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=2048)
    patient: str | None = Field(default=None, pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")
    signature: SignatureIn
    package: str | None = Ref


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accept: bool
    reason: str | None = Field(default=None, max_length=500)


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str = Field(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")


class TerminateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(description=" | ".join(service.TERMINATION_REASONS))
    text: str | None = Field(default=None, max_length=500)


class InPersonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: str = Field(pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")
    team: str = Field(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")
    signature: SignatureIn
    package: str | None = Ref


class FindIn(BaseModel):
    """One way of finding a resident: ``idNumber``, ``phone``, or ``name`` + ``birthDate``."""

    model_config = ConfigDict(extra="forbid")
    team: str = Field(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")
    idNumber: str = Field(default="", max_length=18)
    phone: str = Field(default="", max_length=24)
    name: str = Field(default="", max_length=100)
    birthDate: str = Field(default="", max_length=10)


class InvitationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: str = Field(pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")
    team: str = Field(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status, headers={"Cache-Control": "no-store"})


def _link_json(token: str, expires: datetime, base: str) -> dict[str, Any]:
    return {"token": token, "url": base + flows.url_for(token), "expires": expires.isoformat()}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def team_residents(
    engine: FhirEngine, conn: AsyncConnection, *, team: str, at: datetime
) -> list[dict[str, Any]]:
    """The team's contracted residents with their key-population groups, by name."""
    contracts = await service.contracted_with_team(engine, conn, team=team, at=at)
    patients = sorted({service.patient_of(c) or "" for c in contracts} - {""})
    if not patients:
        return []
    ids = ",".join(p.split("/", 1)[1] for p in patients)
    people = {
        f"Patient/{p['id']}": p
        for p in await service.search(engine, conn, "Patient", [("_id", ids)])
    }
    conditions: dict[str, list[dict[str, Any]]] = {}
    for condition in await service.search(
        engine, conn, "Condition", [("subject", ",".join(patients))]
    ):
        ref = str((condition.get("subject") or {}).get("reference", ""))
        conditions.setdefault(ref, []).append(condition)
    out = []
    for contract in contracts:
        ref = service.patient_of(contract) or ""
        body = people.get(ref, {})
        out.append(
            {
                "patient": ref,
                "name": service.person_name(body),
                "birthDate": body.get("birthDate"),
                "contract": f"Contract/{contract['id']}",
                "applies": contract.get("applies"),
                "keyPopulations": populations.key_populations(
                    body, conditions.get(ref, []), on=at.date()
                ),
            }
        )
    return sorted(out, key=lambda r: (r["name"], r["patient"]))


def build_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["contracting"])

    @router.get("/me")
    async def me(request: Request, principal: Caller) -> JSONResponse:
        who = resident(principal)
        engine = engine_of(request)
        now = service.now_utc()
        async with engine.db.read() as conn:
            members = await service.represented(engine, conn, actor=who, at=now)
            out: dict[str, Any] = {"members": members, "people": {}}
            for patient in ([who] if who.startswith("Patient/") else []) + members:
                history = await service.contracts_of(engine, conn, patient=patient)
                out["people"][patient] = {
                    "current": next((c for c in history if service.is_in_force(c, now)), None),
                    "pending": [c for c in history if c.get("status") == service.PENDING],
                    "history": history,
                }
        return _json(out)

    @router.post("/applications")
    async def apply(request: Request, body: ApplicationIn, principal: Caller) -> JSONResponse:
        who = resident(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            await packages.check_signing_package(engine, conn, body.package)
            contract = await service.do_apply(
                engine,
                conn,
                patient=body.patient or who,
                team=body.team,
                applicant=who,
                signature=body.signature.value(),
                package=body.package,
            )
        return _json(contract, 201)

    @router.get("/links/{token}")
    async def link(request: Request, token: str, principal: Caller) -> JSONResponse:
        engine = engine_of(request)
        found = flows.open_link(engine, token, now=service.now_utc())
        async with engine.db.read() as conn:
            team = await service.read(engine, conn, found.team, ("CareTeam",))
            doctor = (
                await service.read(engine, conn, found.doctor, ("Practitioner", "PractitionerRole"))
                if found.doctor
                else None
            )
        return _json(
            {
                "kind": found.kind,
                "method": found.method,
                "team": found.team,
                "teamName": team.get("name"),
                "doctor": found.doctor,
                "doctorName": service.person_name(doctor) if doctor else None,
                "patient": found.patient,
                "expires": found.expires.isoformat(),
            }
        )

    @router.post("/applications/by-link")
    async def apply_by_link(
        request: Request, body: LinkApplicationIn, principal: Caller
    ) -> JSONResponse:
        who = resident(principal)
        engine = engine_of(request)
        now = service.now_utc()
        found = flows.open_link(engine, body.token, now=now)
        async with engine.db.write() as conn:
            await packages.check_signing_package(engine, conn, body.package)
            contract = await flows.do_apply_by_link(
                engine,
                conn,
                link=found,
                patient=body.patient or who,
                applicant=who,
                signature=body.signature.value(),
                package=body.package,
                now=now,
            )
        return _json(contract, 201)

    @router.post("/contracts/{cid}/withdraw")
    async def withdraw(request: Request, cid: str, principal: Caller) -> JSONResponse:
        who = resident(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            contract = await service.do_withdraw(engine, conn, contract_id=cid, actor=who)
        return _json(contract)

    @router.post("/contracts/{cid}/review")
    async def review(request: Request, cid: str, body: ReviewIn, principal: Caller) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            contract = await service.do_review(
                engine, conn, contract_id=cid, reviewer=who, accept=body.accept, reason=body.reason
            )
        return _json(contract)

    @router.post("/contracts/{cid}/renew")
    async def renew(request: Request, cid: str, principal: Caller) -> JSONResponse:
        who = changer(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            contract = await lifecycle.do_renew(engine, conn, contract_id=cid, actor=who)
        return _json(contract, 201)

    @router.post("/contracts/{cid}/transfer")
    async def transfer(
        request: Request, cid: str, body: TransferIn, principal: Caller
    ) -> JSONResponse:
        who = changer(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            old, new = await lifecycle.do_transfer(
                engine, conn, contract_id=cid, team=body.team, actor=who
            )
        return _json({"ended": old, "contract": new}, 201)

    @router.post("/contracts/{cid}/terminate")
    async def terminate(
        request: Request, cid: str, body: TerminateIn, principal: Caller
    ) -> JSONResponse:
        who = changer(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            contract = await lifecycle.do_terminate(
                engine, conn, contract_id=cid, actor=who, reason=body.reason, text=body.text
            )
        return _json(contract)

    @router.post("/in-person")
    async def in_person(request: Request, body: InPersonIn, principal: Caller) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            await packages.check_signing_package(engine, conn, body.package)
            contract = await service.do_sign_in_person(
                engine,
                conn,
                patient=body.patient,
                team=body.team,
                doctor=who,
                signature=body.signature.value(),
                package=body.package,
            )
        return _json(contract, 201)

    @router.post("/residents/search")
    async def find_residents(request: Request, body: FindIn, principal: Caller) -> JSONResponse:
        """Find the resident to sign in person (POST: ID numbers stay out of URLs); only
        residents the caller's access policy reaches, identifiers masked."""
        who = team_member(principal)
        engine = engine_of(request)
        query = finder.Query(
            id_number=body.idNumber, phone=body.phone, name=body.name, birth_date=body.birthDate
        )
        async with engine.db.read() as conn:
            await service.access_team(engine, conn, team=body.team, member=who)
            found = await finder.find_residents(engine, conn, principal=principal, query=query)
        return _json({"items": [f.json() for f in found]})

    @router.post("/invitations")
    async def invite(request: Request, body: InvitationIn, principal: Caller) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            token, expires, sent = await flows.do_invite(
                engine,
                conn,
                doctor=who,
                team=body.team,
                patient=body.patient,
                base_url=_base(request),
                now=service.now_utc(),
            )
        return _json({**_link_json(token, expires, _base(request)), "notification": sent}, 201)

    @router.get("/card")
    async def card(
        request: Request,
        principal: Caller,
        team: Annotated[str, Query(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")],
    ) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        async with engine.db.read() as conn:
            token, expires = await flows.make_card_link(
                engine, conn, doctor=who, team=team, now=service.now_utc()
            )
        return _json(_link_json(token, expires, _base(request)))

    @router.post("/share")
    async def share(request: Request, principal: Caller) -> JSONResponse:
        who = resident(principal)
        if not who.startswith("Patient/"):
            raise Forbidden("only a resident with a contract can share it")
        engine = engine_of(request)
        async with engine.db.read() as conn:
            token, expires = await flows.make_share_link(
                engine, conn, patient=who, now=service.now_utc()
            )
        return _json(_link_json(token, expires, _base(request)), 201)

    @router.get("/team/applications")
    async def applications(
        request: Request,
        principal: Caller,
        team: Annotated[str, Query(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")],
    ) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        async with engine.db.read() as conn:
            await service.access_team(engine, conn, team=team, member=who)
            found = await service.pending_for_team(engine, conn, team=team)
        return _json({"items": found})

    @router.get("/team/residents")
    async def residents(
        request: Request,
        principal: Caller,
        team: Annotated[str, Query(pattern=r"^CareTeam/[A-Za-z0-9\-.]{1,64}$")],
    ) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        now = service.now_utc()
        async with engine.db.read() as conn:
            await service.access_team(engine, conn, team=team, member=who)
            items = await team_residents(engine, conn, team=team, at=now)
        return _json({"items": items})

    from smartmed.contracting import packages_api  # packages and service records

    router.include_router(packages_api.build_router())
    return router
