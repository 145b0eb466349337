"""Payments: orders paid through a payment provider (docs/payments.md).

Other modules (package purchases now, prescription delivery later) use this module only
through the service API below, the FHIR resources it writes (ChargeItem, Invoice) and its
events. Nothing is activated unless the payment was confirmed by a verified callback or a
provider query.

Order states (``Order.state``)::

    created ──paid (verified callback | provider query, amount matches)──► paid
    created ──deadline passed, provider says unpaid, payment closed──────► expired
    paid ─────mark_fulfilled() by the buying module─────────────────────► fulfilled
    paid | fulfilled ──refund() of everything received, provider done──► refunded

Money is kept in fen (1/100 CNY) and counted once per provider transaction: received and
refunded sums on the order follow a ledger with one row per provider payment or refund.
A payment that arrives for an expired order, or with the wrong amount, changes no state:
it is recorded, a human is told (notify) and a full refund is started.

Service API (``from smartmed.payments import service as payments``)::

    # In the caller's transaction (writes the order row, ChargeItem, Invoice status draft):
    order = await payments.create_order(
        engine, conn,
        subject="Patient/12",                 # who pays: the resident, or a representative
                                              # (RelatedPerson) with sign-on-behalf (payers.py)
        beneficiary="Patient/12",             # whom it is for (default: subject; required
                                              # when a RelatedPerson pays)
        target="Contract/9",                  # what it pays for (any reference)
        description="高血压随访包 (1 year)",    # shown on the checkout page
        amount=Decimal("120.00"),             # CNY, > 0, at most 2 decimals
        purpose="package",                    # free text tag, e.g. package | delivery
        code={"text": "..."},                 # optional ChargeItem.code (CodeableConcept)
        definition="ChargeItemDefinition/3",  # optional: the price definition it came from
        key="contract-9-package",             # optional idempotency key: same key -> same order
        minutes=30,                           # optional time to pay (default: settings)
    )  # -> Order(id, state="created", amount, charge_item, invoice, expires_at, ...)

    # After commit (talks to the provider over HTTP; idempotent, never inside a transaction):
    checkout = await payments.start_checkout(engine, order_id=order.id)
    # -> Checkout(pay_url=..., qr=...): redirect the browser to pay_url or show qr.
    # A browser can also be sent to GET /payments/orders/{id}/pay (does the same, 303).

    order = await payments.get_order(conn, order_id)            # Order | None
    await payments.mark_fulfilled(engine, conn, order_id=..., by="Contract/9")  # paid -> fulfilled
    refund = await payments.refund(engine, conn, order_id=..., amount=None, reason="...",
                                   by="Practitioner/1")          # None: all that is left
    # refund() reserves the money and queues the provider call as a durable job in the
    # caller's transaction; the order becomes ``refunded`` once everything was refunded.

Events. When an order becomes paid (or fulfilled, refunded, expired) its Invoice gets a new
version tagged ``meta.tag`` system :data:`STATE_TAG_SYSTEM`, code = the new state, written
through the engine, so the transition reaches workflow handlers through the outbox
(docs/events.md) at least once. Subscribe with::

    from smartmed.payments import PaymentEvent, on_payment

    @on_payment("paid")                      # event name "payment.paid"
    async def activate(ctx: JobContext, event: PaymentEvent) -> None:
        # event.order_id, event.state, event.target ("Contract/9"), event.subject,
        # event.amount (Decimal CNY), event.purpose, event.charge_item ("ChargeItem/.."),
        # event.invoice ("Invoice/..")
        ...  # activate what was bought, then:
        async with ctx.engine.db.write() as conn:
            await payments.mark_fulfilled(ctx.engine, conn, order_id=event.order_id, by=...)

FHIR: ChargeItem (status billable -> billed | aborted; ``supportingInformation`` = target,
``priceOverride`` = amount) and Invoice (draft -> issued -> balanced | cancelled,
``totalGross``/``totalNet`` in CNY, ``identifier`` system :data:`ORDER_SYSTEM` = order id).

HTTP: ``/api/payments`` (orders for the signed-in resident, status, refunds for
administrators), ``/api/payments/notify/{provider}`` (the provider's signed callback), and the
sandbox provider under ``/sandbox/pay``.
"""

from __future__ import annotations

ORDER_SYSTEM = "urn:smartmed:payment:order"
STATE_TAG_SYSTEM = "urn:smartmed:payment:state"
EVENT_PAID = "payment.paid"
EVENT_FULFILLED = "payment.fulfilled"
EVENT_REFUNDED = "payment.refunded"
EVENT_EXPIRED = "payment.expired"

from smartmed.payments.events import PaymentEvent, on_payment  # noqa: E402
from smartmed.payments.models import Checkout, Order, Refund  # noqa: E402

__all__ = [
    "EVENT_EXPIRED",
    "EVENT_FULFILLED",
    "EVENT_PAID",
    "EVENT_REFUNDED",
    "ORDER_SYSTEM",
    "STATE_TAG_SYSTEM",
    "Checkout",
    "Order",
    "PaymentEvent",
    "Refund",
    "install_payments",
    "on_payment",
]


def install_payments(app: object) -> None:
    """Mount the payments API and pages and the sandbox provider (the only provider so
    far), and register the module's jobs (``app`` is the FastAPI application)."""
    from fastapi import FastAPI

    from smartmed.payments import tasks  # noqa: F401  (registers refund and expiry jobs)
    from smartmed.payments.router import build_payments_router
    from smartmed.payments.sandbox import tasks as sandbox_tasks  # noqa: F401
    from smartmed.payments.sandbox.router import build_sandbox_router

    assert isinstance(app, FastAPI)
    app.include_router(build_payments_router())
    app.include_router(build_sandbox_router())
