"""What the payments service hands out: orders, checkouts, events; money in fen."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from smartmed.fhir.errors import Invalid
from smartmed.fhir.model import fhir_instant

STATES = ("created", "paid", "fulfilled", "refunded", "expired")
# Legal transitions of Order.state; everything else is refused.
TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"paid", "expired"}),
    "paid": frozenset({"fulfilled", "refunded"}),
    "fulfilled": frozenset({"refunded"}),
    "refunded": frozenset(),
    "expired": frozenset(),
}
CURRENCY = "CNY"
MAX_FEN = 10**10  # 100 million yuan: far above any order here, far below BIGINT


def to_fen(amount: Decimal | int | str, *, expression: str = "amount") -> int:
    """A positive CNY amount with at most 2 decimals as whole fen; Invalid otherwise."""
    try:
        cents = Decimal(str(amount)) * 100
        if not cents.is_finite() or cents != cents.to_integral_value():
            raise ValueError("more than 2 decimals")
        fen = int(cents)
    except (InvalidOperation, ValueError):
        raise Invalid(
            f"amount must be a CNY amount with at most 2 decimals, not {amount!r}",
            expression=expression,
        ) from None
    if not 0 < fen <= MAX_FEN:
        raise Invalid(
            f"amount must be above 0 and at most {MAX_FEN // 100} CNY", expression=expression
        )
    return fen


def from_fen(fen: int) -> Decimal:
    """Whole fen as a CNY Decimal with two places."""
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))


@dataclass(frozen=True, slots=True)
class Order:
    """One order as the service reports it."""

    id: str
    state: str
    subject: str
    target: str
    purpose: str
    description: str
    amount: Decimal
    currency: str
    charge_item: str  # "ChargeItem/<id>"
    invoice: str  # "Invoice/<id>"
    received: Decimal
    refunded: Decimal
    anomaly: str | None
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    fulfilled_at: datetime | None
    closed_at: datetime | None
    pay_url: str | None

    @classmethod
    def from_row(cls, row: Any) -> Order:
        return cls(
            id=row.id,
            state=row.state,
            subject=row.subject,
            target=row.target,
            purpose=row.purpose,
            description=row.description,
            amount=from_fen(row.amount_fen),
            currency=row.currency,
            charge_item=f"ChargeItem/{row.charge_item_id}",
            invoice=f"Invoice/{row.invoice_id}",
            received=from_fen(row.received_fen),
            refunded=from_fen(row.refunded_fen),
            anomaly=row.anomaly,
            created_at=row.created_at,
            expires_at=row.expires_at,
            paid_at=row.paid_at,
            fulfilled_at=row.fulfilled_at,
            closed_at=row.closed_at,
            pay_url=row.pay_url,
        )

    def as_json(self) -> dict[str, Any]:
        """The order for the API (amounts as strings: exact decimals)."""

        def instant(moment: datetime | None) -> str | None:
            return fhir_instant(moment) if moment is not None else None

        return {
            "id": self.id,
            "state": self.state,
            "subject": self.subject,
            "target": self.target,
            "purpose": self.purpose,
            "description": self.description,
            "amount": str(self.amount),
            "currency": self.currency,
            "chargeItem": self.charge_item,
            "invoice": self.invoice,
            "received": str(self.received),
            "refunded": str(self.refunded),
            "anomaly": self.anomaly,
            "created": instant(self.created_at),
            "expires": instant(self.expires_at),
            "paid": instant(self.paid_at),
            "fulfilled": instant(self.fulfilled_at),
            "closed": instant(self.closed_at),
            "payUrl": self.pay_url,
        }


@dataclass(frozen=True, slots=True)
class Checkout:
    """Where the payer pays: a page to redirect to and the same link as a QR payload."""

    order_id: str
    pay_url: str
    qr: str


@dataclass(frozen=True, slots=True)
class Refund:
    """A refund asked for (``pending`` until the provider confirmed it)."""

    id: str
    order_id: str
    amount: Decimal
    state: str
    reason: str
