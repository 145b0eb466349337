"""The payments service: orders, checkout, confirmation, fulfilment, refunds, expiry.

Functions taking ``conn`` work in the caller's transaction and never commit; functions
taking only ``engine`` talk to the provider over HTTP and open their own short
transactions around it (never holding one while waiting on the network: on SQLite that
would stop every writer, and the sandbox answering the call writes too).

Every state change of an order happens under its row lock (``FOR UPDATE`` on
PostgreSQL; SQLite's single writer serialises them) and is conditional on the state it
was read in, so concurrent callbacks, queries, refunds and expiry apply once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Conflict, FhirError, Invalid, NotFound
from smartmed.fhir.hooks import current_access
from smartmed.fhir.model import utcnow
from smartmed.fhir.repository import Repository, new_id
from smartmed.jobs import enqueue
from smartmed.jobs.queue import insert_ignore
from smartmed.payments import payers, records
from smartmed.payments.models import (
    CURRENCY,
    TRANSITIONS,
    Checkout,
    Order,
    Refund,
    from_fen,
    to_fen,
)
from smartmed.payments.provider import PaymentRequest, get_provider
from smartmed.payments.tables import payment_ledger, payment_order, payment_refund

log = structlog.get_logger("smartmed.payments")

_REF = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")
_PURPOSE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
SYSTEM = "system"  # who asked for refunds the platform starts itself


@contextmanager
def as_platform() -> Iterator[None]:
    """Write the order's FHIR record as the platform, not under the caller's access policy.

    A resident may not write Invoices; the payment service writes them for the resident."""
    token = current_access.set(None)
    try:
        yield
    finally:
        current_access.reset(token)


def _repo(engine: FhirEngine, conn: AsyncConnection) -> Repository:
    return engine.repository(conn)


def _check_ref(value: str, name: str, types: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not _REF.match(value):
        raise Invalid(f"{name} must be a reference like Patient/12, not {value!r}", expression=name)
    if types is not None and value.split("/", 1)[0] not in types:
        raise Invalid(f"{name} must reference a {' or '.join(types)}", expression=name)
    return value


# -- reads -----------------------------------------------------------------------------


async def get_order(conn: AsyncConnection, order_id: str) -> Order | None:
    """The order, or None."""
    row = (await conn.execute(select(payment_order).where(payment_order.c.id == order_id))).first()
    return None if row is None else Order.from_row(row)


async def beneficiary_of(
    engine: FhirEngine, conn: AsyncConnection, invoice_id: str, payer: str
) -> str | None:
    """The resident an order is for: its Invoice's subject (the payer may be their
    representative); the payer if it is a Patient and the Invoice cannot be read."""
    try:
        with as_platform():
            stored = await _repo(engine, conn).read("Invoice", invoice_id)
        invoice = orjson.loads(stored.content or "{}")
        found = str((invoice.get("subject") or {}).get("reference", ""))
        if found.startswith("Patient/"):
            return found
    except FhirError:
        pass
    return payer if payer.startswith("Patient/") else None


async def list_orders(
    conn: AsyncConnection, *, subject: str | None = None, target: str | None = None
) -> list[Order]:
    """Orders of a payer and/or for a target, newest first (at most 200)."""
    stmt = select(payment_order).order_by(payment_order.c.created_at.desc()).limit(200)
    if subject is not None:
        stmt = stmt.where(payment_order.c.subject == subject)
    if target is not None:
        stmt = stmt.where(payment_order.c.target == target)
    return [Order.from_row(r) for r in (await conn.execute(stmt)).all()]


async def _lock(conn: AsyncConnection, order_id: str) -> Any:
    stmt = select(payment_order).where(payment_order.c.id == order_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return (await conn.execute(stmt)).first()


# -- orders ----------------------------------------------------------------------------


async def create_order(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    subject: str,
    target: str,
    description: str,
    amount: Decimal | int | str,
    purpose: str = "package",
    code: dict[str, Any] | None = None,
    definition: str | None = None,
    key: str | None = None,
    minutes: int | None = None,
    beneficiary: str | None = None,
) -> Order:
    """Record a new order (state ``created``) with its ChargeItem and draft Invoice.

    ``subject`` is the payer: the resident (``Patient``) or a family representative
    (``RelatedPerson``, or a ``Patient`` paying for a member) holding the beneficiary's
    ``sign-on-behalf`` delegation (``payers.py``; Forbidden otherwise). ``beneficiary`` is
    the resident it is for (the ChargeItem's and Invoice's subject; default: the payer,
    required when the payer is a RelatedPerson). The same ``key`` returns the first order
    (Invalid if it was for something else)."""
    _check_ref(subject, "subject", payers.PAYER_TYPES)
    if beneficiary is None:
        if not subject.startswith("Patient/"):
            raise Invalid(
                "a representative's order needs the beneficiary (the Patient it is for)",
                expression="beneficiary",
            )
        beneficiary = subject
    _check_ref(beneficiary, "beneficiary", ("Patient",))
    _check_ref(target, "target")
    if definition is not None:
        _check_ref(definition, "definition")
    if not isinstance(description, str) or not 0 < len(description.strip()) <= 500:
        raise Invalid("description must be 1-500 characters", expression="description")
    if not isinstance(purpose, str) or not _PURPOSE.match(purpose):
        raise Invalid("purpose must be a lower-case code such as 'package'", expression="purpose")
    if code is not None and not isinstance(code, dict):
        raise Invalid("code must be a CodeableConcept", expression="code")
    if key is not None and not 0 < len(key) <= 255:
        raise Invalid("key must be 1-255 characters", expression="key")
    ttl = minutes if minutes is not None else engine.settings.payments_order_minutes
    if not isinstance(ttl, int) or not 0 < ttl <= 7 * 24 * 60:
        raise Invalid("minutes must be between 1 and 10080", expression="minutes")
    fen = to_fen(amount)
    repo = _repo(engine, conn)
    with as_platform():
        for ref, name in ((subject, "subject"), (beneficiary, "beneficiary"), (target, "target")):
            if not await repo.exists(*ref.split("/", 1)):
                raise Invalid(f"{name} {ref} does not exist", expression=name)
    await payers.check_payer(conn, payer=subject, beneficiary=beneficiary)
    now = utcnow()
    order_id = str(uuid.uuid4())
    charge_item_id, invoice_id = new_id(), new_id()
    values = {
        "id": order_id,
        "key": key,
        "subject": subject,
        "target": target,
        "purpose": purpose,
        "description": description.strip(),
        "amount_fen": fen,
        "currency": CURRENCY,
        "state": "created",
        "provider": engine.settings.payments_provider,
        "received_fen": 0,
        "refunded_fen": 0,
        "reserved_fen": 0,
        "charge_item_id": charge_item_id,
        "invoice_id": invoice_id,
        "created_at": now,
        "expires_at": now + timedelta(minutes=ttl),
    }
    stmt: Any = (
        payment_order.insert() if key is None else insert_ignore(conn, payment_order, ["key"])
    )
    made = (await conn.execute(stmt.values(**values).returning(payment_order.c.id))).first()
    if made is None:  # the key exists: the first order, if it is the same purchase
        first = (await conn.execute(select(payment_order).where(payment_order.c.key == key))).one()
        if (first.subject, first.target, first.amount_fen) != (subject, target, fen):
            raise Invalid("this key was already used for a different order", expression="key")
        return Order.from_row(first)
    charge = records.new_charge_item(
        order_id=order_id,
        subject=beneficiary,
        payer=subject,
        target=target,
        description=description.strip(),
        amount_fen=fen,
        code=code,
        definition=definition,
        entered=now,
    )
    invoice = records.new_invoice(
        order_id=order_id,
        subject=beneficiary,
        payer=subject,
        charge_item_id=charge_item_id,
        amount_fen=fen,
        created=now,
    )
    with as_platform():
        await repo.create_many([(charge, charge_item_id), (invoice, invoice_id)])
    log.info("payment order created", order=order_id, purpose=purpose, amount_fen=fen)
    row = (await conn.execute(select(payment_order).where(payment_order.c.id == order_id))).one()
    return Order.from_row(row)


def _urls(engine: FhirEngine, order_id: str, provider: str) -> tuple[str, str]:
    settings = engine.settings
    base = (settings.payments_public_url or settings.payments_sandbox_url).rstrip("/")
    return f"{base}/api/payments/notify/{provider}", f"{base}/payments/orders/{order_id}/return"


async def start_checkout(engine: FhirEngine, *, order_id: str) -> Checkout:
    """Create the order's payment at the provider (once); where the payer pays."""
    async with engine.db.read() as conn:
        row = (
            await conn.execute(select(payment_order).where(payment_order.c.id == order_id))
        ).first()
    if row is None:
        raise NotFound(f"no payment order {order_id}")
    if row.state != "created":
        raise Conflict(f"the order is {row.state}; only a created order can be paid")
    if row.pay_url and row.qr:
        return Checkout(row.id, row.pay_url, row.qr)
    if row.expires_at <= utcnow():
        raise Conflict("the order's time to pay is over")
    provider = get_provider(engine.settings)
    notify_url, return_url = _urls(engine, row.id, provider.name)
    payment = await provider.create_payment(
        PaymentRequest(
            out_trade_no=row.id,
            amount_fen=row.amount_fen,
            description=row.description,
            notify_url=notify_url,
            return_url=return_url,
            expires_at=row.expires_at,
        )
    )
    if payment.pay_url is None or payment.qr is None:
        from smartmed.payments.errors import ProviderError

        raise ProviderError("the payment provider gave no payment page")
    async with engine.db.write() as conn:
        current = await _lock(conn, row.id)
        if current.state == "created":
            await conn.execute(
                update(payment_order)
                .where(payment_order.c.id == row.id, payment_order.c.pay_url.is_(None))
                .values(provider_ref=payment.payment_id, pay_url=payment.pay_url, qr=payment.qr)
            )
            with as_platform():
                await records.issue_invoice(_repo(engine, conn), row.invoice_id)
    if current.state != "created":
        # It expired while we were at the provider: nobody may pay that payment now.
        await provider.close_payment(row.id)
        raise Conflict(f"the order is {current.state}; only a created order can be paid")
    return Checkout(row.id, payment.pay_url, payment.qr)


async def _transition(
    engine: FhirEngine, conn: AsyncConnection, row: Any, state: str, **values: Any
) -> None:
    if state not in TRANSITIONS[row.state]:
        raise Conflict(f"a {row.state} order cannot become {state}")
    done = await conn.execute(
        update(payment_order)
        .where(payment_order.c.id == row.id, payment_order.c.state == row.state)
        .values(state=state, **values)
    )
    if done.rowcount != 1:  # the row lock makes this unreachable; never apply twice
        raise Conflict(f"order {row.id} changed concurrently; retry")
    with as_platform():
        await records.record_state(
            _repo(engine, conn),
            state=state,
            charge_item_id=row.charge_item_id,
            invoice_id=row.invoice_id,
        )
    log.info("payment order state", order=row.id, state=state, was=row.state)


async def mark_fulfilled(
    engine: FhirEngine, conn: AsyncConnection, *, order_id: str, by: str
) -> Order:
    """paid -> fulfilled: the buying module activated what was bought. Idempotent."""
    row = await _lock(conn, order_id)
    if row is None:
        raise NotFound(f"no payment order {order_id}")
    if row.state != "fulfilled":
        if row.state != "paid":
            raise Conflict(f"the order is {row.state}; only a paid order can be fulfilled")
        await _transition(
            engine, conn, row, "fulfilled", fulfilled_at=utcnow(), fulfilled_by=by[:200]
        )
    got = await get_order(conn, order_id)
    assert got is not None
    return got


# -- money in ----------------------------------------------------------------------------


async def apply_payment(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    order_id: str,
    transaction_id: str,
    amount_fen: int,
    source: str,
) -> str:
    """Count a payment the provider confirmed (verified callback or query); what happened.

    ``accepted`` (created -> paid), ``duplicate`` (this transaction was counted already),
    ``unknown-order``, or an anomaly — ``amount-mismatch``, ``late-payment`` (the order
    had expired), ``double-payment`` — which changes no state: the money is counted,
    a person is told and a refund of it is queued.
    """
    row = await _lock(conn, order_id)
    if row is None:
        return "unknown-order"
    seen = (
        await conn.execute(
            select(payment_ledger.c.pk).where(
                payment_ledger.c.kind == "payment",
                payment_ledger.c.external_id == transaction_id,
            )
        )
    ).first()
    if seen is not None:
        return "duplicate"
    now = utcnow()
    await conn.execute(
        payment_ledger.insert().values(
            order_id=order_id,
            kind="payment",
            external_id=transaction_id,
            amount_fen=amount_fen,
            source=source,
            at=now,
        )
    )
    await conn.execute(
        update(payment_order)
        .where(payment_order.c.id == order_id)
        .values(received_fen=payment_order.c.received_fen + amount_fen)
    )
    if row.state == "created" and row.received_fen == 0 and amount_fen == row.amount_fen:
        await _transition(engine, conn, row, "paid", paid_at=now)
        return "accepted"
    if row.state == "created" and row.received_fen == 0:
        anomaly = "amount-mismatch"
    elif row.state == "expired":
        anomaly = "late-payment"
    else:
        anomaly = "double-payment"
    await conn.execute(
        update(payment_order).where(payment_order.c.id == order_id).values(anomaly=anomaly)
    )
    await _queue_refund(conn, order_id, amount_fen, reason=anomaly, by=SYSTEM)
    await _escalate(engine, conn, row, anomaly, amount_fen)
    log.warning("payment needs review", order=order_id, anomaly=anomaly, amount_fen=amount_fen)
    return anomaly


async def _escalate(
    engine: FhirEngine, conn: AsyncConnection, row: Any, anomaly: str, amount_fen: int
) -> None:
    """Tell the reviewer (settings) and the payer that money came in that is going back."""
    from smartmed.notify import notify

    data = {
        "order": row.id,
        "anomaly": anomaly,
        "amount": str(from_fen(amount_fen)),
        "expected": str(from_fen(row.amount_fen)),
        "description": row.description,
    }
    recipients = [engine.settings.payments_reviewer, row.subject]
    for recipient in [r for r in recipients if r]:
        try:
            await notify(
                engine,
                conn,
                recipient=recipient,
                template="payment-review",
                data=data,
                channels=("inapp", "sms", "email"),
                urgency="routine",
                key=f"payment-review:{row.id}:{anomaly}:{amount_fen}:{recipient}"[:255],
            )
        except Invalid as exc:
            # Never silent: the anomaly stays on the order and in the callback log.
            log.error("payment review notification not queued", order=row.id, error=str(exc))


# -- money out ---------------------------------------------------------------------------


async def _queue_refund(
    conn: AsyncConnection, order_id: str, amount_fen: int, *, reason: str, by: str
) -> str:
    reserved = await conn.execute(
        update(payment_order)
        .where(
            payment_order.c.id == order_id,
            payment_order.c.received_fen
            - payment_order.c.refunded_fen
            - payment_order.c.reserved_fen
            >= amount_fen,
        )
        .values(reserved_fen=payment_order.c.reserved_fen + amount_fen)
    )
    if reserved.rowcount != 1:
        raise Conflict("the refund is more than what is left to refund on this order")
    refund_id = str(uuid.uuid4())
    await conn.execute(
        payment_refund.insert().values(
            id=refund_id,
            order_id=order_id,
            amount_fen=amount_fen,
            reason=reason[:500],
            requested_by=by[:200],
            state="pending",
            created_at=utcnow(),
        )
    )
    await enqueue(
        conn, "payments.refund", {"refund": refund_id}, key=f"payments.refund:{refund_id}"
    )
    return refund_id


async def refund(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    order_id: str,
    amount: Decimal | int | str | None = None,
    reason: str,
    by: str,
) -> Refund:
    """Queue a refund of a paid or fulfilled order (None: all that is left)."""
    if not isinstance(reason, str) or not 0 < len(reason.strip()) <= 500:
        raise Invalid("reason must be 1-500 characters", expression="reason")
    row = await _lock(conn, order_id)
    if row is None:
        raise NotFound(f"no payment order {order_id}")
    if row.state not in ("paid", "fulfilled"):
        raise Conflict(f"the order is {row.state}; only paid or fulfilled orders are refunded")
    left = row.received_fen - row.refunded_fen - row.reserved_fen
    fen = left if amount is None else to_fen(amount)
    if left <= 0:
        raise Conflict("nothing is left to refund on this order")
    if fen > left:
        raise Conflict(f"at most {from_fen(left)} CNY is left to refund on this order")
    refund_id = await _queue_refund(conn, order_id, fen, reason=reason.strip(), by=by)
    log.info("refund queued", order=order_id, refund=refund_id, amount_fen=fen)
    return Refund(refund_id, order_id, from_fen(fen), "pending", reason.strip())


async def record_refund(
    engine: FhirEngine, conn: AsyncConnection, *, refund_id: str, source: str
) -> str:
    """Count a refund the provider made; ``recorded``, ``duplicate`` or ``unknown-refund``."""
    ref = (
        await conn.execute(select(payment_refund).where(payment_refund.c.id == refund_id))
    ).first()
    if ref is None:
        return "unknown-refund"
    row = await _lock(conn, ref.order_id)
    seen = (
        await conn.execute(
            select(payment_ledger.c.pk).where(
                payment_ledger.c.kind == "refund", payment_ledger.c.external_id == refund_id
            )
        )
    ).first()
    if seen is not None:
        return "duplicate"
    now = utcnow()
    await conn.execute(
        payment_ledger.insert().values(
            order_id=ref.order_id,
            kind="refund",
            external_id=refund_id,
            amount_fen=ref.amount_fen,
            source=source,
            at=now,
        )
    )
    release = ref.amount_fen if ref.state == "pending" else 0
    await conn.execute(
        update(payment_refund)
        .where(payment_refund.c.id == refund_id)
        .values(state="succeeded", finished_at=now, error=None)
    )
    await conn.execute(
        update(payment_order)
        .where(payment_order.c.id == ref.order_id)
        .values(
            refunded_fen=payment_order.c.refunded_fen + ref.amount_fen,
            reserved_fen=payment_order.c.reserved_fen - release,
        )
    )
    refunded = row.refunded_fen + ref.amount_fen
    if row.state in ("paid", "fulfilled") and refunded >= row.received_fen:
        await _transition(engine, conn, row, "refunded", closed_at=now)
    log.info("refund recorded", order=ref.order_id, refund=refund_id, amount_fen=ref.amount_fen)
    return "recorded"


async def fail_refund(
    engine: FhirEngine, conn: AsyncConnection, *, refund_id: str, error: str
) -> bool:
    """The provider will not make this refund: release the money reserved for it and
    tell the reviewer and the payer (the money received stays on the order)."""
    ref = (
        await conn.execute(select(payment_refund).where(payment_refund.c.id == refund_id))
    ).first()
    if ref is None or ref.state != "pending":
        return False
    row = await _lock(conn, ref.order_id)
    await conn.execute(
        update(payment_refund)
        .where(payment_refund.c.id == refund_id, payment_refund.c.state == "pending")
        .values(state="failed", finished_at=utcnow(), error=error[:2000])
    )
    await conn.execute(
        update(payment_order)
        .where(payment_order.c.id == ref.order_id)
        .values(reserved_fen=payment_order.c.reserved_fen - ref.amount_fen)
    )
    await _escalate(engine, conn, row, "refund-failed", ref.amount_fen)
    log.error("refund failed", order=ref.order_id, refund=refund_id, error=error)
    return True


async def failed_refunds(conn: AsyncConnection, *, limit: int = 200) -> list[dict[str, Any]]:
    """Refunds the provider refused or never confirmed (state ``failed``), newest first,
    with their order: the money is still on the order for a person to settle or retry."""
    stmt = (
        select(
            payment_refund,
            payment_order.c.subject.label("payer"),
            payment_order.c.description,
            payment_order.c.state.label("order_state"),
            payment_order.c.target,
        )
        .join(payment_order, payment_order.c.id == payment_refund.c.order_id)
        .where(payment_refund.c.state == "failed")
        .order_by(payment_refund.c.finished_at.desc(), payment_refund.c.id)
        .limit(limit)
    )
    return [
        {
            "id": r.id,
            "order": r.order_id,
            "amount": str(from_fen(r.amount_fen)),
            "reason": r.reason,
            "error": r.error,
            "requestedBy": r.requested_by,
            "failed": r.finished_at,
            "payer": r.payer,
            "description": r.description,
            "orderState": r.order_state,
            "target": r.target,
        }
        for r in (await conn.execute(stmt)).all()
    ]


async def retry_refund(
    engine: FhirEngine, conn: AsyncConnection, *, refund_id: str, by: str
) -> Refund:
    """Try a failed refund again through the ``payments.refund`` job, with the **same**
    refund id: providers are idempotent on it, so a refund that did go through although
    we never heard of it is counted once, never paid out twice. The amount is reserved
    again (Conflict if the order no longer holds it, or the refund is not failed)."""
    ref = (
        await conn.execute(select(payment_refund).where(payment_refund.c.id == refund_id))
    ).first()
    if ref is None:
        raise NotFound(f"no refund {refund_id}")
    await _lock(conn, ref.order_id)  # serialise with callbacks, refunds and other retries
    done = await conn.execute(
        update(payment_refund)
        .where(payment_refund.c.id == refund_id, payment_refund.c.state == "failed")
        .values(state="pending", finished_at=None, error=None)
    )
    if done.rowcount != 1:
        raise Conflict(f"refund {refund_id} is not a failed refund (it may be retried already)")
    reserved = await conn.execute(
        update(payment_order)
        .where(
            payment_order.c.id == ref.order_id,
            payment_order.c.received_fen
            - payment_order.c.refunded_fen
            - payment_order.c.reserved_fen
            >= ref.amount_fen,
        )
        .values(reserved_fen=payment_order.c.reserved_fen + ref.amount_fen)
    )
    if reserved.rowcount != 1:  # the caller's transaction rolls the state back
        raise Conflict("the order no longer holds the amount of this refund")
    await enqueue(
        conn,
        "payments.refund",
        {"refund": refund_id},
        key=f"payments.refund:{refund_id}:retry:{uuid.uuid4().hex[:12]}",
    )
    log.info("refund retried", order=ref.order_id, refund=refund_id, by=by[:200], error=ref.error)
    return Refund(refund_id, ref.order_id, from_fen(ref.amount_fen), "pending", ref.reason)


# -- provider queries and expiry ---------------------------------------------------------


async def sync_order(engine: FhirEngine, *, order_id: str) -> Order:
    """Ask the provider where the order's payment stands and count a confirmed payment."""
    async with engine.db.read() as conn:
        order = await get_order(conn, order_id)
    if order is None:
        raise NotFound(f"no payment order {order_id}")
    if order.pay_url is None:
        return order  # never sent to the provider: nothing to ask
    status = await get_provider(engine.settings).query_payment(order_id)
    if status is not None and status.state == "paid" and status.transaction_id:
        async with engine.db.write() as conn:
            await apply_payment(
                engine,
                conn,
                order_id=order_id,
                transaction_id=status.transaction_id,
                amount_fen=status.paid_fen,
                source="query",
            )
    async with engine.db.read() as conn:
        got = await get_order(conn, order_id)
    assert got is not None
    return got


async def expire_order(engine: FhirEngine, *, order_id: str, now: datetime | None = None) -> str:
    """Expire a created order past its deadline, asking the provider first; its state.

    A payment the provider confirms is counted instead (the order becomes paid). An
    unpaid payment is closed at the provider before the order expires, so it cannot be
    paid afterwards; one paid in between is found by the close and counted."""
    moment = now or utcnow()
    async with engine.db.read() as conn:
        order = await get_order(conn, order_id)
    if order is None:
        raise NotFound(f"no payment order {order_id}")
    if order.state != "created" or order.expires_at > moment:
        return order.state
    if order.pay_url is not None:
        provider = get_provider(engine.settings)
        status = await provider.query_payment(order_id)
        if status is not None and status.state == "pending":
            status = await provider.close_payment(order_id)
        if status is not None and status.state == "paid" and status.transaction_id:
            async with engine.db.write() as conn:
                await apply_payment(
                    engine,
                    conn,
                    order_id=order_id,
                    transaction_id=status.transaction_id,
                    amount_fen=status.paid_fen,
                    source="query",
                )
    async with engine.db.write() as conn:
        row = await _lock(conn, order_id)
        if row.state == "created":
            await _transition(engine, conn, row, "expired", closed_at=utcnow())
        state: str = (await _lock(conn, order_id)).state
    return state


async def due_for_expiry(conn: AsyncConnection, *, now: datetime, limit: int = 200) -> list[str]:
    """Created orders whose time to pay is over, oldest first."""
    stmt = (
        select(payment_order.c.id)
        .where(payment_order.c.state == "created", payment_order.c.expires_at <= now)
        .order_by(payment_order.c.expires_at)
        .limit(limit)
    )
    return [r.id for r in (await conn.execute(stmt)).all()]
