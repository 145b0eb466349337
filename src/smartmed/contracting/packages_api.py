"""HTTP API of service packages and service records (under ``/api/contracting``; JSON in,
errors as OperationOutcome).

======  ==================================  ===============================================
method  path                                who and what
======  ==================================  ===============================================
GET     /packages                           anyone signed in: packages on sale
                                            (``?retired=true``: publishers see all)
GET     /packages/{id}                      anyone signed in: one package
POST    /packages                           publisher: a new package → 201
PUT     /packages/{id}                      publisher: edit title, items, price
POST    /packages/{id}/retire               publisher: take it off sale
POST    /contracts/{id}/package             resident, representative: choose a package
                                            (free: 200, active now; paid: 201 with the
                                            order and where to pay)
GET     /contracts/{id}/services            the contract's team, the resident or their
                                            representative: package, used / remaining,
                                            every service record
POST    /contracts/{id}/services            team member: record a delivered service
======  ==================================  ===============================================

Publishers are the roles whose rights (the access policy in force) include updating the
directory category — PlanDefinition and ChargeItemDefinition are directory resources;
under the shipped policy institution and platform administrators.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting import packages, service, services
from smartmed.contracting.api import Caller, engine_of, person, resident, team_member
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError, Forbidden, Invalid
from smartmed.identity.principal import Principal
from smartmed.payments import service as payments

ID = r"^[A-Za-z0-9\-.]{1,64}$"


def may_publish(principal: Principal) -> bool:
    """Whether a role of the caller may publish packages (the nav entry's rule)."""
    from smartmed.portal.nav import BY_KEY

    return any(BY_KEY["packages"].allows(r.role) for r in principal.roles)


def publisher(principal: Principal) -> str:
    if not may_publish(principal):
        raise Forbidden("only administrators with directory rights publish packages")
    return principal.fhir_user or principal.subject


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(max_length=40)
    quantity: int


class PackageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(max_length=40)
    title: str = Field(max_length=100)
    titleEn: str = Field(default="", max_length=100)
    description: str = Field(default="", max_length=500)
    price: str = Field(max_length=20, description="CNY, e.g. '120.00'; '0' for a free package")
    items: list[ItemIn] = Field(max_length=20)

    def spec(self) -> packages.Spec:
        return packages.check_spec(
            code=self.code,
            title=self.title,
            title_en=self.titleEn,
            description=self.description,
            price=self.price,
            items=[(i.code, i.quantity) for i in self.items],
        )


class ChooseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: str = Field(pattern=r"^PlanDefinition/[A-Za-z0-9\-.]{1,64}$")


class ServiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str = Field(max_length=40)
    kind: str = Field(default="Encounter", max_length=20)
    date: datetime | None = None


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status, headers={"Cache-Control": "no-store"})


async def may_see_services(
    engine: FhirEngine, conn: AsyncConnection, *, contract_id: str, principal: Principal
) -> dict[str, Any]:
    """The contract, if the caller is on its team or is the resident or their
    representative; Forbidden otherwise."""
    contract = await service.access_contract(engine, conn, contract_id)
    who = person(principal)
    if who.startswith(("Practitioner/", "PractitionerRole/")):
        team = service.team_of(contract)
        assert team is not None
        await service.access_team(engine, conn, team=team, member=team_member(principal))
    else:
        patient = service.patient_of(contract)
        assert patient is not None
        await service.check_signer(
            engine, conn, actor=resident(principal), patient=patient, at=service.now_utc()
        )
    return contract


async def pay_url(engine: FhirEngine, order_id: str) -> str:
    """The provider's checkout page, else the portal page that starts the checkout."""
    try:
        return (await payments.start_checkout(engine, order_id=order_id)).pay_url
    except FhirError:
        return f"/payments/orders/{order_id}/pay"


def build_router() -> APIRouter:
    """Routes without a prefix: ``api.build_router`` includes them under its own."""
    router = APIRouter()

    @router.get("/packages")
    async def list_(
        request: Request, principal: Caller, retired: Annotated[bool, Query()] = False
    ) -> JSONResponse:
        person(principal)
        if retired:
            publisher(principal)
        engine = engine_of(request)
        await packages.seed_if_empty(engine)
        async with engine.db.read() as conn:
            found = await packages.list_packages(engine, conn, retired=retired)
        return _json({"items": [p.json() for p in found]})

    @router.get("/packages/{pid}")
    async def one(request: Request, pid: str, principal: Caller) -> JSONResponse:
        person(principal)
        engine = engine_of(request)
        async with engine.db.read() as conn:
            found = await packages.get_package(engine, conn, pid)
        return _json(found.json())

    @router.post("/packages")
    async def publish(request: Request, body: PackageIn, principal: Caller) -> JSONResponse:
        publisher(principal)
        spec = body.spec()
        engine = engine_of(request)
        async with engine.db.write() as conn:
            made = await packages.do_publish(engine, conn, spec=spec)
        return _json(made.json(), 201)

    @router.put("/packages/{pid}")
    async def edit(request: Request, pid: str, body: PackageIn, principal: Caller) -> JSONResponse:
        publisher(principal)
        spec = body.spec()
        engine = engine_of(request)
        async with engine.db.write() as conn:
            edited = await packages.do_edit(engine, conn, package=pid, spec=spec)
        return _json(edited.json())

    @router.post("/packages/{pid}/retire")
    async def retire(request: Request, pid: str, principal: Caller) -> JSONResponse:
        publisher(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            retired = await packages.do_retire(engine, conn, package=pid)
        return _json(retired.json())

    @router.post("/contracts/{cid}/package")
    async def choose(request: Request, cid: str, body: ChooseIn, principal: Caller) -> JSONResponse:
        who = resident(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            choice = await packages.do_choose(
                engine, conn, contract_id=cid, package=body.package, actor=who
            )
        out: dict[str, Any] = {"contract": choice.contract, "package": choice.package.json()}
        if choice.order is None:
            out["active"] = True
            return _json(out)
        out["active"] = False
        out["order"] = {
            "id": choice.order.id,
            "state": choice.order.state,
            "amount": str(choice.order.amount),
            "currency": choice.order.currency,
            "payer": choice.order.subject,
        }
        out["payUrl"] = await pay_url(engine, choice.order.id)
        return _json(out, 201)

    @router.get("/contracts/{cid}/services")
    async def used(request: Request, cid: str, principal: Caller) -> JSONResponse:
        engine = engine_of(request)
        async with engine.db.read() as conn:
            await may_see_services(engine, conn, contract_id=cid, principal=principal)
            found = await services.usage(engine, conn, contract_id=cid)
        return _json(found.json())

    @router.post("/contracts/{cid}/services")
    async def record(
        request: Request, cid: str, body: ServiceIn, principal: Caller
    ) -> JSONResponse:
        who = team_member(principal)
        when = body.date
        if when is not None and when.tzinfo is None:
            raise Invalid("date must carry a time zone (e.g. 2026-11-22T09:00:00+08:00)")
        engine = engine_of(request)
        async with engine.db.write() as conn:
            contract = await service.access_contract(engine, conn, cid)
            team = service.team_of(contract)
            assert team is not None
            await service.access_team(engine, conn, team=team, member=who)
            made = await services.do_record(
                engine,
                conn,
                contract_id=cid,
                item=body.item,
                kind=body.kind,
                performer=who,
                when=when.astimezone(UTC) if when else None,
            )
        return _json(made, 201)

    return router
