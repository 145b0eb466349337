"""HTTP of the sandbox provider, under ``/sandbox/pay``.

======  =========================================  ==========================================
method  path                                       purpose
======  =========================================  ==========================================
POST    /sandbox/pay/api/payments                  create a payment (idempotent per order)
GET     /sandbox/pay/api/payments/{out_trade_no}   where it stands
POST    /sandbox/pay/api/payments/{no}/close       close an unpaid payment
POST    /sandbox/pay/api/refunds                   refund (idempotent per out_refund_no)
GET     /sandbox/pay/checkout/{payment_id}         the payer's page: amount, QR, pay, cancel
POST    /sandbox/pay/checkout/{payment_id}/pay     pay (then: signed callback to the merchant)
POST    /sandbox/pay/checkout/{payment_id}/cancel  go back to the merchant without paying
======  =========================================  ==========================================

API requests must be signed by the merchant (``payments.signing``); answers are JSON,
errors ``{"code": ..., "message": ...}`` as real providers do. The checkout forms carry a
double-submit CSRF token (cookie + field).
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from datetime import datetime
from typing import Any

import orjson
import segno
import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.model import utcnow
from smartmed.jobs import enqueue
from smartmed.jobs.queue import insert_ignore
from smartmed.payments.errors import BadCallback
from smartmed.payments.i18n import gettext_for, page
from smartmed.payments.models import from_fen
from smartmed.payments.provider import signing_secret
from smartmed.payments.signing import verify
from smartmed.payments.tables import sandbox_payment, sandbox_refund

log = structlog.get_logger("smartmed.payments.sandbox")

PREFIX = "/sandbox/pay"
CSRF_COOKIE = "sandbox_csrf"


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status)


def _engine(request: Request) -> FhirEngine:
    engine: FhirEngine = request.app.state.fhir
    return engine


async def _signed(request: Request) -> tuple[str, bytes] | JSONResponse:
    """(merchant id, body) of a correctly signed request, else the error to answer."""
    settings = _engine(request).settings
    body = await request.body()
    try:
        verify(
            signing_secret(settings),
            settings.payments_merchant_id,
            request.headers,
            body,
            method=request.method,
            path=request.url.path,
        )
    except BadCallback as exc:
        log.warning("sandbox request refused", reason=exc.detail)
        return _error(401, "SIGN_ERROR", exc.detail)
    return settings.payments_merchant_id, body


def _view(row: Any, base: str) -> dict[str, Any]:
    pay_url = f"{base}{PREFIX}/checkout/{row.id}"
    return {
        "payment_id": row.id,
        "out_trade_no": row.out_trade_no,
        "state": row.state,
        "amount_fen": row.amount_fen,
        "paid_fen": row.paid_fen,
        "refunded_fen": row.refunded_fen,
        "transaction_id": row.transaction_id,
        "pay_url": pay_url,
        "qr": pay_url,  # the QR code encodes the checkout link: scan it to pay on a phone
    }


def _base(request: Request) -> str:
    return _engine(request).settings.payments_sandbox_url.rstrip("/")


async def _by_trade_no(conn: AsyncConnection, merchant: str, out_trade_no: str) -> Any:
    return (
        await conn.execute(
            select(sandbox_payment).where(
                sandbox_payment.c.merchant_id == merchant,
                sandbox_payment.c.out_trade_no == out_trade_no,
            )
        )
    ).first()


def build_sandbox_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["sandbox"], include_in_schema=False)

    @router.post("/api/payments")
    async def create_payment(request: Request) -> Response:
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        merchant, body = signed
        try:
            data = orjson.loads(body)
            out_trade_no = str(data["out_trade_no"])
            amount = data["amount_fen"]
            description = str(data["description"])[:500]
            notify_url = str(data["notify_url"])
            return_url = str(data.get("return_url") or "")
            expires_at = datetime.fromisoformat(str(data["expires_at"])).replace(tzinfo=None)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _error(
                400,
                "PARAM_ERROR",
                "out_trade_no, amount_fen, description, notify_url and expires_at are required",
            )
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return _error(400, "PARAM_ERROR", "amount_fen must be a positive integer")
        if not 0 < len(out_trade_no) <= 64 or not notify_url.startswith(("http://", "https://")):
            return _error(400, "PARAM_ERROR", "out_trade_no or notify_url malformed")
        engine = _engine(request)
        async with engine.db.write() as conn:
            await conn.execute(
                insert_ignore(conn, sandbox_payment, ["merchant_id", "out_trade_no"]).values(
                    id=str(uuid.uuid4()),
                    merchant_id=merchant,
                    out_trade_no=out_trade_no,
                    amount_fen=amount,
                    description=description,
                    notify_url=notify_url,
                    return_url=return_url or None,
                    state="pending",
                    paid_fen=0,
                    refunded_fen=0,
                    created_at=utcnow(),
                    expires_at=expires_at,
                    notify_attempts=0,
                )
            )
            row = await _by_trade_no(conn, merchant, out_trade_no)
        if row.amount_fen != amount:
            return _error(409, "OUT_TRADE_NO_USED", "out_trade_no already used with another amount")
        return JSONResponse(_view(row, _base(request)))

    @router.get("/api/payments/{out_trade_no}")
    async def query_payment(request: Request, out_trade_no: str) -> Response:
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        async with _engine(request).db.read() as conn:
            row = await _by_trade_no(conn, signed[0], out_trade_no)
        if row is None:
            return _error(404, "ORDER_NOT_EXIST", "no such payment")
        return JSONResponse(_view(row, _base(request)))

    @router.post("/api/payments/{out_trade_no}/close")
    async def close_payment(request: Request, out_trade_no: str) -> Response:
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        async with _engine(request).db.write() as conn:
            await conn.execute(
                update(sandbox_payment)
                .where(
                    sandbox_payment.c.merchant_id == signed[0],
                    sandbox_payment.c.out_trade_no == out_trade_no,
                    sandbox_payment.c.state == "pending",
                )
                .values(state="closed")
            )
            row = await _by_trade_no(conn, signed[0], out_trade_no)
        if row is None:
            return _error(404, "ORDER_NOT_EXIST", "no such payment")
        return JSONResponse(_view(row, _base(request)))  # a paid payment stays paid

    @router.post("/api/refunds")
    async def refund(request: Request) -> Response:
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        merchant, body = signed
        try:
            data = orjson.loads(body)
            out_trade_no = str(data["out_trade_no"])
            out_refund_no = str(data["out_refund_no"])
            amount = data["amount_fen"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error(400, "PARAM_ERROR", "out_trade_no, out_refund_no, amount_fen required")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return _error(400, "PARAM_ERROR", "amount_fen must be a positive integer")
        if not 0 < len(out_refund_no) <= 64:
            return _error(400, "PARAM_ERROR", "out_refund_no malformed")
        engine = _engine(request)
        async with engine.db.write() as conn:
            payment = await _by_trade_no(conn, merchant, out_trade_no)
            if payment is None:
                return _error(404, "ORDER_NOT_EXIST", "no such payment")
            existing = (
                await conn.execute(
                    select(sandbox_refund).where(
                        sandbox_refund.c.merchant_id == merchant,
                        sandbox_refund.c.out_refund_no == out_refund_no,
                    )
                )
            ).first()
            if existing is not None:  # the same refund asked again: the same answer
                if existing.amount_fen != amount or existing.payment_id != payment.id:
                    return _error(409, "REFUND_NO_USED", "out_refund_no used for another refund")
                return JSONResponse(_refund_view(existing))
            if payment.state != "paid":
                return _error(400, "TRADE_NOT_PAID", "only a paid payment can be refunded")
            if payment.refunded_fen + amount > payment.paid_fen:
                return _error(400, "REFUND_EXCEEDS", "refund exceeds what was paid")
            refund_id = str(uuid.uuid4())
            await conn.execute(
                sandbox_refund.insert().values(
                    id=refund_id,
                    merchant_id=merchant,
                    payment_id=payment.id,
                    out_refund_no=out_refund_no,
                    amount_fen=amount,
                    created_at=utcnow(),
                )
            )
            await conn.execute(
                update(sandbox_payment)
                .where(sandbox_payment.c.id == payment.id)
                .values(refunded_fen=sandbox_payment.c.refunded_fen + amount)
            )
            await enqueue(
                conn,
                "sandbox.notify",
                {"payment": payment.id, "refund": refund_id},
                key=f"sandbox.notify:refund:{refund_id}",
            )
            made = (
                await conn.execute(select(sandbox_refund).where(sandbox_refund.c.id == refund_id))
            ).one()
        return JSONResponse(_refund_view(made))

    # -- the payer's pages ---------------------------------------------------------------

    async def load(request: Request, payment_id: str) -> Any:
        async with _engine(request).db.read() as conn:
            return (
                await conn.execute(
                    select(sandbox_payment).where(sandbox_payment.c.id == payment_id)
                )
            ).first()

    def checkout_page(
        request: Request, row: Any, status: int = 200, note: str | None = None
    ) -> Response:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        url = f"{_base(request)}{PREFIX}/checkout/{row.id}"
        qr = segno.make(url, error="m").svg_inline(scale=5, title="QR", omitsize=False)
        open_ = row.state == "pending" and row.expires_at > utcnow()
        response = page(
            request,
            "sandbox_checkout.html",
            status,
            payment=row,
            amount=from_fen(row.amount_fen),
            qr_svg=qr,
            csrf=token,
            can_pay=open_,
            note=note,
        )
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path=PREFIX)
        return response

    @router.get("/checkout/{payment_id}")
    async def checkout(request: Request, payment_id: str) -> Response:
        row = await load(request, payment_id)
        if row is None:
            _ = gettext_for(request)
            return page(request, "sandbox_missing.html", 404, message=_("No such payment."))
        return checkout_page(request, row)

    async def csrf_ok(request: Request) -> bool:
        form = await request.form()
        given = form.get("csrf")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return isinstance(given, str) and bool(cookie) and hmac.compare_digest(given, cookie)

    @router.post("/checkout/{payment_id}/pay")
    async def pay(request: Request, payment_id: str) -> Response:
        row = await load(request, payment_id)
        _ = gettext_for(request)
        if row is None:
            return page(request, "sandbox_missing.html", 404, message=_("No such payment."))
        if not await csrf_ok(request):
            return checkout_page(request, row, 403, _("The page expired. Please try again."))
        engine = _engine(request)
        async with engine.db.write() as conn:
            done = await conn.execute(
                update(sandbox_payment)
                .where(
                    sandbox_payment.c.id == payment_id,
                    sandbox_payment.c.state == "pending",
                    sandbox_payment.c.expires_at > utcnow(),
                )
                .values(
                    state="paid",
                    paid_fen=sandbox_payment.c.amount_fen,
                    transaction_id=f"sbx{uuid.uuid4().hex[:28]}",
                    paid_at=utcnow(),
                )
            )
            if done.rowcount == 1:
                await enqueue(
                    conn,
                    "sandbox.notify",
                    {"payment": payment_id},
                    key=f"sandbox.notify:paid:{payment_id}",
                )
        if done.rowcount != 1:
            row = await load(request, payment_id)
            return checkout_page(request, row, 409, _("This payment can no longer be made."))
        log.info("sandbox payment paid", payment=payment_id)
        return _back(row, "paid")

    @router.post("/checkout/{payment_id}/cancel")
    async def cancel(request: Request, payment_id: str) -> Response:
        row = await load(request, payment_id)
        if row is None:
            _ = gettext_for(request)
            return page(request, "sandbox_missing.html", 404, message=_("No such payment."))
        return _back(row, "cancelled")

    return router


def _back(row: Any, result: str) -> Response:
    if not row.return_url:
        return RedirectResponse(f"{PREFIX}/checkout/{row.id}", 303)
    joiner = "&" if "?" in row.return_url else "?"
    return RedirectResponse(f"{row.return_url}{joiner}result={result}", 303)


def _refund_view(row: Any) -> dict[str, Any]:
    return {
        "refund_id": row.id,
        "out_refund_no": row.out_refund_no,
        "amount_fen": row.amount_fen,
        "state": "succeeded",
    }
