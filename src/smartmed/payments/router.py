"""HTTP of the payments module (JSON; errors as OperationOutcome), and the payer's pages.

======  =======================================  ============================================
method  path                                     purpose
======  =======================================  ============================================
POST    /api/payments/orders                     the signed-in resident (or a representative,
                                                 ``beneficiary``: the member) orders a
                                                 product; 201 with the order and where to pay
GET     /api/payments/orders                     my orders (administrators: ``?subject=``)
GET     /api/payments/orders/{id}                one order (its payer or an administrator)
POST    /api/payments/orders/{id}/checkout       where to pay (creates the provider payment)
POST    /api/payments/orders/{id}/sync           ask the provider now (payer, administrator)
POST    /api/payments/orders/{id}/refund         administrators: refund all or part; 202
GET     /api/payments/refunds?state=failed       administrators: refunds that failed
POST    /api/payments/refunds/{id}/retry         administrators: try a failed refund again; 202
POST    /api/payments/notify/{provider}          the provider's signed callback
GET     /payments/orders/{id}/pay                303 to the provider's checkout page
GET     /payments/orders/{id}/return             where the provider sends the payer back
GET     /payments/admin/refunds                  administrators: failed refunds, retry button
POST    /payments/admin/refunds/{id}/retry       (form, CSRF) try one again
======  =======================================  ============================================

The caller is a bearer token or the portal session (whose unsafe requests carry the
session's CSRF token, like the portal's own forms). The callback is authenticated by its
signature only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import (
    Conflict,
    FhirError,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)
from smartmed.identity.principal import Principal, Role
from smartmed.identity.service import get_identity
from smartmed.payments import payers, products, service
from smartmed.payments.callbacks import handle_callback
from smartmed.payments.errors import ProviderError
from smartmed.payments.i18n import gettext_for, page
from smartmed.payments.models import Order

ADMIN_ROLES = (Role.PLATFORM_ADMIN, Role.INSTITUTION_ADMIN)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_NO_STORE = {"Cache-Control": "no-store"}


async def caller(request: Request) -> Principal:
    """Bearer token, else the portal session's principal (CSRF on unsafe methods); else 401."""
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
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", error=None)
    return await get_identity(request.app).principal(request, token.strip())


Caller = Annotated[Principal, Depends(caller)]


def _page_caller(request: Request) -> Principal:
    """The portal session's principal; not signed in: to the login page and back."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        from smartmed.portal.nav import LoginRequired

        raise LoginRequired()
    return principal


def _error_page(request: Request, exc: FhirError) -> Response:
    """A payment page's error in the payer's language (never an OperationOutcome)."""
    _ = gettext_for(request)
    if isinstance(exc, NotFound):
        message = _("No such order.")
    elif isinstance(exc, Conflict):
        message = _("This order can no longer be paid.")
    else:
        message = _("The payment service is not available. Please try again later.")
    return page(request, "sandbox_missing.html", exc.status, message=message)


def _engine(request: Request) -> FhirEngine:
    engine: FhirEngine = request.app.state.fhir
    return engine


def _is_admin(principal: Principal) -> bool:
    return any(principal.has_role(r) for r in ADMIN_ROLES)


def _payer(principal: Principal) -> str:
    """The caller as a payer: a resident (Patient) or a family representative
    (RelatedPerson); who they may pay for is ``payers.check_payer``'s question."""
    if principal.fhir_user and principal.fhir_user.startswith(
        tuple(f"{t}/" for t in payers.PAYER_TYPES)
    ):
        return principal.fhir_user
    raise Forbidden("only a resident or a family representative can order and pay")


async def _visible(request: Request, principal: Principal, order_id: str) -> Order:
    """The order if the caller is its payer or an administrator; 404 otherwise."""
    async with _engine(request).db.read() as conn:
        order = await service.get_order(conn, order_id)
    if order is None or not (_is_admin(principal) or order.subject == principal.fhir_user):
        raise NotFound(f"no payment order {order_id}")  # others' orders are not revealed
    return order


_FLASH = "payments_refund_retried"


def _admin_page(request: Request) -> Principal:
    """A portal page for administrators: the session's active role must be one."""
    from smartmed.portal.nav import LoginRequired, PageForbidden
    from smartmed.portal.session import get_session

    session = get_session(request)
    principal = getattr(request.state, "principal", None)
    if session.account is None or not isinstance(principal, Principal):
        raise LoginRequired()
    if session.active_role not in ADMIN_ROLES:
        raise PageForbidden()
    return principal


def _refund_json(row: dict[str, Any]) -> dict[str, Any]:
    failed = row["failed"]
    return {**row, "failed": failed.isoformat() + "Z" if failed is not None else None}


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product: str = Field(min_length=3, max_length=200, description="ChargeItemDefinition/3")
    for_: str | None = Field(
        default=None, alias="for", max_length=200, description="what it pays for: Contract/9"
    )
    key: str | None = Field(default=None, min_length=1, max_length=200)
    beneficiary: str | None = Field(
        default=None,
        pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$",
        description="the resident it is for (a representative's order); default: the caller",
    )


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: str | None = Field(default=None, max_length=20, description="CNY; absent: all")
    reason: str = Field(min_length=1, max_length=500)


def build_payments_router() -> APIRouter:
    router = APIRouter(tags=["payments"])

    @router.post("/api/payments/orders", status_code=201)
    async def create(request: Request, principal: Caller, body: OrderIn) -> dict[str, Any]:
        subject = _payer(principal)
        service._check_ref(body.product, "product")
        if body.for_ is not None:
            service._check_ref(body.for_, "for")
        engine = _engine(request)
        async with engine.db.write() as conn:
            product = await products.resolve(engine, conn, body.product, subject, body.for_)
            order = await service.create_order(
                engine,
                conn,
                subject=subject,
                target=product.target,
                description=product.description,
                amount=product.amount,
                purpose=product.purpose,
                code=product.code,
                definition=product.definition,
                key=f"{subject}:{body.key}" if body.key else None,
                beneficiary=body.beneficiary,
            )
        checkout = await service.start_checkout(engine, order_id=order.id)
        async with engine.db.read() as conn:
            fresh = await service.get_order(conn, order.id)
        assert fresh is not None
        return {**fresh.as_json(), "payUrl": checkout.pay_url, "qr": checkout.qr}

    @router.get("/api/payments/orders")
    async def mine(
        request: Request, principal: Caller, subject: str | None = None
    ) -> dict[str, Any]:
        if subject is not None and not _is_admin(principal):
            raise Forbidden("only administrators list other people's orders")
        who = subject or _payer(principal)
        async with _engine(request).db.read() as conn:
            orders = await service.list_orders(conn, subject=who)
        return {"orders": [o.as_json() for o in orders]}

    @router.get("/api/payments/orders/{order_id}")
    async def one(request: Request, principal: Caller, order_id: str) -> dict[str, Any]:
        return (await _visible(request, principal, order_id)).as_json()

    @router.post("/api/payments/orders/{order_id}/checkout")
    async def checkout(request: Request, principal: Caller, order_id: str) -> dict[str, Any]:
        await _visible(request, principal, order_id)
        found = await service.start_checkout(_engine(request), order_id=order_id)
        return {"id": order_id, "payUrl": found.pay_url, "qr": found.qr}

    @router.post("/api/payments/orders/{order_id}/sync")
    async def sync(request: Request, principal: Caller, order_id: str) -> dict[str, Any]:
        await _visible(request, principal, order_id)
        return (await service.sync_order(_engine(request), order_id=order_id)).as_json()

    @router.post("/api/payments/orders/{order_id}/refund", status_code=202)
    async def refund(
        request: Request, principal: Caller, order_id: str, body: RefundIn
    ) -> dict[str, Any]:
        if not _is_admin(principal):
            raise Forbidden("only administrators refund payments")
        engine = _engine(request)
        async with engine.db.write() as conn:
            made = await service.refund(
                engine,
                conn,
                order_id=order_id,
                amount=body.amount,
                reason=body.reason,
                by=principal.fhir_user or principal.subject,
            )
        return {
            "id": made.id,
            "order": made.order_id,
            "amount": str(made.amount),
            "state": made.state,
            "reason": made.reason,
        }

    @router.get("/api/payments/refunds")
    async def refunds(request: Request, principal: Caller, state: str = "failed") -> dict[str, Any]:
        if not _is_admin(principal):
            raise Forbidden("only administrators list refunds")
        if state != "failed":
            raise Invalid("only state=failed is listed", expression="state")
        async with _engine(request).db.read() as conn:
            found = await service.failed_refunds(conn)
        return {"refunds": [_refund_json(r) for r in found]}

    @router.post("/api/payments/refunds/{refund_id}/retry", status_code=202)
    async def retry(request: Request, principal: Caller, refund_id: str) -> dict[str, Any]:
        if not _is_admin(principal):
            raise Forbidden("only administrators retry refunds")
        engine = _engine(request)
        async with engine.db.write() as conn:
            made = await service.retry_refund(
                engine, conn, refund_id=refund_id, by=principal.fhir_user or principal.subject
            )
        return {
            "id": made.id,
            "order": made.order_id,
            "amount": str(made.amount),
            "state": "pending",
        }

    # -- the administrators' failed-refunds page (portal shell) ---------------------------

    @router.get("/payments/admin/refunds", include_in_schema=False)
    async def refunds_page(request: Request) -> Response:
        _admin_page(request)
        from smartmed.portal.render import render
        from smartmed.portal.session import get_session

        async with _engine(request).db.read() as conn:
            found = await service.failed_refunds(conn)
        return render(
            request,
            "payments/refunds.html",
            refunds=found,
            done=get_session(request).pop(_FLASH),
        )

    @router.post("/payments/admin/refunds/{refund_id}/retry", include_in_schema=False)
    async def retry_page(request: Request, refund_id: str) -> Response:
        principal = _admin_page(request)
        from smartmed.portal import csrf_protect
        from smartmed.portal.render import render
        from smartmed.portal.session import get_session

        await csrf_protect(request)
        engine = _engine(request)
        try:
            async with engine.db.write() as conn:
                await service.retry_refund(
                    engine, conn, refund_id=refund_id, by=principal.fhir_user or principal.subject
                )
        except (Conflict, NotFound) as exc:
            async with engine.db.read() as conn:
                found = await service.failed_refunds(conn)
            return render(
                request, "payments/refunds.html", exc.status, refunds=found, error=exc.status
            )
        get_session(request).set(_FLASH, refund_id)
        return RedirectResponse("/payments/admin/refunds", 303)

    @router.post("/api/payments/notify/{provider}")
    async def notify(request: Request, provider: str) -> Response:
        body = await request.body()
        if len(body) > 64 * 1024:
            raise Invalid("callback body too large")
        status, outcome = await handle_callback(
            _engine(request),
            provider,
            request.headers,
            body,
            source_ip=request.client.host if request.client else None,
        )
        if status == 200:
            return JSONResponse({"code": "SUCCESS", "outcome": outcome}, 200)
        return JSONResponse({"code": "FAIL", "outcome": outcome}, status)

    # -- pages ------------------------------------------------------------------------------

    @router.get("/payments/orders/{order_id}/pay", include_in_schema=False)
    async def pay(request: Request, order_id: str) -> Response:
        principal = _page_caller(request)
        try:
            order = await _visible(request, principal, order_id)
            if order.state != "created":
                return RedirectResponse(f"/payments/orders/{order_id}/return", 303)
            found = await service.start_checkout(_engine(request), order_id=order_id)
        except FhirError as exc:
            return _error_page(request, exc)
        return RedirectResponse(found.pay_url, 303, headers=_NO_STORE)

    @router.get("/payments/orders/{order_id}/return", include_in_schema=False)
    async def back(request: Request, order_id: str) -> Response:
        principal = _page_caller(request)
        try:
            order = await _visible(request, principal, order_id)
        except FhirError as exc:
            return _error_page(request, exc)
        if order.state == "created" and order.pay_url is not None:
            try:
                order = await service.sync_order(_engine(request), order_id=order_id)
            except ProviderError:  # the callback will still come; the page says "waiting"
                pass
        return page(request, "order_status.html", order=order)

    return router
