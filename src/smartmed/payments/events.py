"""``payment.<state>`` events: order state changes as workflow handlers receive them.

Each state change writes an Invoice version tagged with the new state (``records.py``);
the outbox row of that version reaches handlers through the jobs machinery (at least
once, docs/events.md). :func:`on_payment` registers a handler for one state and hands it
a :class:`PaymentEvent` built from the order row; versions of other states are skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from smartmed.jobs import Event, JobContext, on_event
from smartmed.payments import ORDER_SYSTEM, STATE_TAG_SYSTEM
from smartmed.payments.models import STATES, from_fen
from smartmed.payments.tables import payment_order


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """What a handler of ``payment.<state>`` learns about the order."""

    name: str  # payment.paid | payment.fulfilled | payment.refunded | payment.expired
    order_id: str
    state: str
    subject: str  # the payer: Patient/12, or a representative RelatedPerson/4
    target: str  # what it pays for: Contract/9
    purpose: str
    amount: Decimal  # CNY
    charge_item: str  # ChargeItem/<id>
    invoice: str  # Invoice/<id>


PaymentHandler = Callable[[JobContext, PaymentEvent], Awaitable[None]]


def state_of(invoice: dict[str, object]) -> tuple[str | None, str | None]:
    """(order id, state tag) of an Invoice version written by this module."""
    meta = invoice.get("meta")
    tags = meta.get("tag", []) if isinstance(meta, dict) else []
    state = next((t.get("code") for t in tags if t.get("system") == STATE_TAG_SYSTEM), None)
    ids = invoice.get("identifier")
    order = (
        next(
            (
                i.get("value")
                for i in ids or []
                if isinstance(i, dict) and i.get("system") == ORDER_SYSTEM
            ),
            None,
        )
        if isinstance(ids, list)
        else None
    )
    return order, state


def on_payment(
    state: str, *, name: str | None = None
) -> Callable[[PaymentHandler], PaymentHandler]:
    """Register ``async def h(ctx, event: PaymentEvent)`` for orders entering ``state``."""
    if state not in STATES or state == "created":
        raise ValueError(f"state must be one of {', '.join(STATES[1:])}")

    def register(function: PaymentHandler) -> PaymentHandler:
        handler_name = name or f"{function.__module__}.{function.__qualname__}"

        async def handle(ctx: JobContext, event: Event) -> None:
            if event.resource is None:
                return
            order_id, tagged = state_of(event.resource)
            if order_id is None or tagged != state:
                return
            async with ctx.engine.db.read() as conn:
                row = (
                    await conn.execute(select(payment_order).where(payment_order.c.id == order_id))
                ).first()
            if row is None:
                return
            await function(
                ctx,
                PaymentEvent(
                    name=f"payment.{state}",
                    order_id=row.id,
                    state=state,
                    subject=row.subject,
                    target=row.target,
                    purpose=row.purpose,
                    amount=from_fen(row.amount_fen),
                    charge_item=f"ChargeItem/{row.charge_item_id}",
                    invoice=f"Invoice/{row.invoice_id}",
                ),
            )

        handle.__qualname__ = function.__qualname__
        on_event("Invoice", actions={"update"}, name=handler_name)(handle)
        return function

    return register
