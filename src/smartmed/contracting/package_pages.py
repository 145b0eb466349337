"""Portal pages of service packages and service records (templates in
``portal/templates/contracting/``; mounted by ``pages.build_router``).

======  ====================================  =============================================
method  path                                  what
======  ====================================  =============================================
GET     /contracting/packages                 resident: my package (used / remaining), the
                                              packages on sale, orders waiting for payment
POST    /contracting/packages/choose          resident: choose a free package, or buy a
                                              paid one (303 to the payments checkout)
GET     /contracting/services/{id}            team member: a contract's package, used /
                                              remaining, every delivered service
POST    /contracting/services/{id}            team member: record a delivered service
GET     /contracting/admin/packages           publisher: every package, forms
POST    /contracting/admin/packages           publisher: publish a new package
POST    /contracting/admin/packages/{id}      publisher: edit one
POST    /contracting/admin/packages/{id}/retire  publisher: retire one
======  ====================================  =============================================
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from smartmed.contracting import api, packages, service, services
from smartmed.contracting.packages_api import may_see_services
from smartmed.fhir.errors import FhirError
from smartmed.payments import service as payments
from smartmed.portal.forms import form_data
from smartmed.portal.nav import require
from smartmed.portal.pages import see_other
from smartmed.portal.render import render
from smartmed.portal.session import get_session

BASE = "/contracting"
FLASH = "packages_done"


def _error(request: Request, exc: FhirError) -> Response:
    return render(
        request, "contracting/package_error.html", exc.status, reason=service.reason_of(exc)
    )


def _flash(request: Request, what: str) -> None:
    get_session(request).set(FLASH, what)


async def _mine(request: Request) -> list[dict[str, Any]]:
    """The resident's and represented members' open contracts with their usage and
    orders waiting for payment."""
    who = api.resident(request.state.principal)
    engine = api.engine_of(request)
    now = service.now_utc()
    out = []
    async with engine.db.read() as conn:
        members = await service.represented(engine, conn, actor=who, at=now)
        for patient in ([who] if who.startswith("Patient/") else []) + members:
            body = await service.read(engine, conn, patient, ("Patient",))
            for contract in await service.contracts_of(engine, conn, patient=patient):
                if not (
                    service.is_in_force(contract, now) or contract.get("status") == service.PENDING
                ):
                    continue
                usage = await services.usage(engine, conn, contract_id=contract["id"])
                waiting = [
                    o
                    for o in await payments.list_orders(conn, target=f"Contract/{contract['id']}")
                    if o.state == "created" and o.subject == who
                ]
                out.append(
                    {
                        "patient": patient,
                        "self": patient == who,
                        "name": service.person_name(body),
                        "contract": contract,
                        "usage": usage,
                        "waiting": waiting,
                    }
                )
    return out


def _spec(values: dict[str, str], code: str | None = None) -> packages.Spec:
    items: list[tuple[str, object]] = []
    for item in packages.ITEMS:
        raw = values.get(f"q_{item}", "").strip()
        if raw and raw != "0":
            items.append((item, raw))
    return packages.check_spec(
        code=code if code is not None else values.get("code", ""),
        title=values.get("title", ""),
        title_en=values.get("title_en", ""),
        description=values.get("description", ""),
        price=values.get("price", ""),
        items=items,
    )


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE + "/packages")
    async def browse(request: Request) -> Response:
        require(request, "package")
        engine = api.engine_of(request)
        await packages.seed_if_empty(engine)
        contracts = await _mine(request)
        async with engine.db.read() as conn:
            offered = await packages.list_packages(engine, conn)
        return render(
            request,
            "contracting/packages.html",
            contracts=contracts,
            offered=offered,
            done=get_session(request).pop(FLASH),
            service=service,
        )

    @router.post(BASE + "/packages/choose")
    async def choose(request: Request) -> Response:
        require(request, "package")
        values = await form_data(request)
        who = api.resident(request.state.principal)
        engine = api.engine_of(request)
        try:
            async with engine.db.write() as conn:
                choice = await packages.do_choose(
                    engine,
                    conn,
                    contract_id=values.get("contract", ""),
                    package=values.get("package", ""),
                    actor=who,
                )
        except FhirError as exc:
            return _error(request, exc)
        if choice.order is None:
            _flash(request, "package-chosen")
            return see_other(BASE + "/packages")
        return see_other(f"/payments/orders/{choice.order.id}/pay")

    async def _services_page(
        request: Request, cid: str, error: FhirError | None = None
    ) -> Response:
        engine = api.engine_of(request)
        try:
            async with engine.db.read() as conn:
                await may_see_services(
                    engine, conn, contract_id=cid, principal=request.state.principal
                )
                usage = await services.usage(engine, conn, contract_id=cid)
                patient = service.patient_of(usage.contract) or ""
                body = await service.read(engine, conn, patient, ("Patient",))
        except FhirError as exc:
            return _error(request, exc)
        return render(
            request,
            "contracting/services.html",
            422 if error is not None else 200,
            usage=usage,
            name=service.person_name(body),
            items=packages.ITEMS,
            reason=service.reason_of(error) if error is not None else None,
            done=get_session(request).pop(FLASH),
        )

    @router.get(BASE + "/services/{cid}")
    async def records(request: Request, cid: str) -> Response:
        require(request, "contracting")
        return await _services_page(request, cid)

    @router.post(BASE + "/services/{cid}")
    async def record(request: Request, cid: str) -> Response:
        require(request, "contracting")
        values = await form_data(request)
        who = api.team_member(request.state.principal)
        engine = api.engine_of(request)
        try:
            async with engine.db.write() as conn:
                contract = await service.access_contract(engine, conn, cid)
                team = service.team_of(contract)
                assert team is not None
                await service.access_team(engine, conn, team=team, member=who)
                await services.do_record(
                    engine,
                    conn,
                    contract_id=cid,
                    item=values.get("item", ""),
                    kind=values.get("kind", "Encounter"),
                    performer=who,
                )
        except FhirError as exc:
            if exc.status in (403, 404):
                return _error(request, exc)
            return await _services_page(request, cid, exc)
        _flash(request, "service-recorded")
        return see_other(f"{BASE}/services/{cid}")

    async def _admin_page(
        request: Request,
        error: FhirError | None = None,
        values: dict[str, str] | None = None,
        editing: str | None = None,
    ) -> Response:
        engine = api.engine_of(request)
        await packages.seed_if_empty(engine)
        async with engine.db.read() as conn:
            found = await packages.list_packages(engine, conn, retired=True)
        return render(
            request,
            "contracting/admin_packages.html",
            422 if error is not None else 200,
            found=found,
            items=packages.ITEMS,
            reason=service.reason_of(error) if error is not None else None,
            values=values or {},
            editing=editing,
            done=get_session(request).pop(FLASH),
        )

    @router.get(BASE + "/admin/packages")
    async def admin(request: Request) -> Response:
        require(request, "packages")
        return await _admin_page(request)

    @router.post(BASE + "/admin/packages")
    async def publish(request: Request) -> Response:
        require(request, "packages")
        values = await form_data(request)
        engine = api.engine_of(request)
        try:
            spec = _spec(values)
            async with engine.db.write() as conn:
                await packages.do_publish(engine, conn, spec=spec)
        except FhirError as exc:
            return await _admin_page(request, exc, values)
        _flash(request, "package-published")
        return see_other(BASE + "/admin/packages")

    @router.post(BASE + "/admin/packages/{pid}")
    async def edit(request: Request, pid: str) -> Response:
        require(request, "packages")
        values = await form_data(request)
        engine = api.engine_of(request)
        try:
            spec = _spec(values, code="edit")
            async with engine.db.write() as conn:
                await packages.do_edit(engine, conn, package=pid, spec=spec)
        except FhirError as exc:
            if exc.status == 404:
                return _error(request, exc)
            return await _admin_page(request, exc, values, editing=pid)
        _flash(request, "package-edited")
        return see_other(BASE + "/admin/packages")

    @router.post(BASE + "/admin/packages/{pid}/retire")
    async def retire(request: Request, pid: str) -> Response:
        require(request, "packages")
        engine = api.engine_of(request)
        try:
            async with engine.db.write() as conn:
                await packages.do_retire(engine, conn, package=pid)
        except FhirError as exc:
            return _error(request, exc)
        _flash(request, "package-retired-done")
        return see_other(BASE + "/admin/packages")

    return router
