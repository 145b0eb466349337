"""The FHIR record of an order: a ChargeItem (what is bought) and an Invoice (what is owed).

| order state | ChargeItem.status | Invoice.status | Invoice meta.tag (STATE_TAG_SYSTEM) |
|---|---|---|---|
| created, before checkout | billable | draft | created |
| created, sent to the provider | billable | issued | created |
| paid | billed | balanced | paid |
| fulfilled | billed | balanced | fulfilled |
| refunded | aborted | cancelled (cancelledReason "refunded") | refunded |
| expired | aborted | cancelled (cancelledReason "expired") | expired |

Each state change is a new Invoice version carrying the new tag, written through the
engine in the same transaction as the order row: the outbox row of that version is the
event (``payments.events.on_payment``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from smartmed.fhir import jsonio
from smartmed.fhir.model import fhir_instant
from smartmed.fhir.repository import Repository
from smartmed.payments import ORDER_SYSTEM, STATE_TAG_SYSTEM
from smartmed.payments.models import CURRENCY, from_fen

_CHARGE_STATUS = {
    "created": "billable",
    "paid": "billed",
    "fulfilled": "billed",
    "refunded": "aborted",
    "expired": "aborted",
}


def money(fen: int) -> dict[str, Any]:
    return {"value": from_fen(fen), "currency": CURRENCY}


def _tag(state: str) -> dict[str, Any]:
    return {"tag": [{"system": STATE_TAG_SYSTEM, "code": state}]}


def new_charge_item(
    *,
    order_id: str,
    subject: str,
    target: str,
    description: str,
    amount_fen: int,
    code: dict[str, Any] | None,
    definition: str | None,
    entered: datetime,
    payer: str | None = None,
) -> dict[str, Any]:
    """``subject``: the resident it is for; a ``payer`` other than them (a family
    representative) is the ChargeItem's ``enterer`` (who ordered it)."""
    supporting = [{"reference": target}]
    if definition is not None:
        supporting.append({"reference": definition})
    extra: dict[str, Any] = {}
    if payer is not None and payer != subject:
        extra["enterer"] = {"reference": payer}
    return {
        "resourceType": "ChargeItem",
        "identifier": [{"system": ORDER_SYSTEM, "value": order_id}],
        "status": "billable",
        "code": code or {"text": description},
        "subject": {"reference": subject},
        "quantity": {"value": 1},
        "priceOverride": money(amount_fen),
        "enteredDate": fhir_instant(entered),
        **extra,
        "supportingInformation": supporting,
    }


def new_invoice(
    *,
    order_id: str,
    subject: str,
    charge_item_id: str,
    amount_fen: int,
    created: datetime,
    payer: str | None = None,
) -> dict[str, Any]:
    """``subject``: the resident it is for; ``recipient``: who pays (default: them)."""
    return {
        "resourceType": "Invoice",
        "meta": _tag("created"),
        "identifier": [{"system": ORDER_SYSTEM, "value": order_id}],
        "status": "draft",
        "subject": {"reference": subject},
        "recipient": {"reference": payer or subject},
        "date": fhir_instant(created),
        "lineItem": [
            {
                "sequence": 1,
                "chargeItemReference": {"reference": f"ChargeItem/{charge_item_id}"},
                "priceComponent": [{"type": "base", "amount": money(amount_fen)}],
            }
        ],
        "totalNet": money(amount_fen),
        "totalGross": money(amount_fen),
    }


async def _load(repo: Repository, type_: str, id_: str) -> dict[str, Any]:
    stored = await repo.read(type_, id_)
    resource: dict[str, Any] = jsonio.loads(stored.content or "{}")
    return resource


async def issue_invoice(repo: Repository, invoice_id: str) -> None:
    """draft -> issued (the payer was sent to the provider)."""
    invoice = await _load(repo, "Invoice", invoice_id)
    if invoice.get("status") == "draft":
        invoice["status"] = "issued"
        await repo.update("Invoice", invoice_id, invoice)


async def record_state(
    repo: Repository, *, state: str, charge_item_id: str, invoice_id: str
) -> None:
    """Write the ChargeItem and Invoice versions of an order that entered ``state``."""
    charge = await _load(repo, "ChargeItem", charge_item_id)
    if charge.get("status") != _CHARGE_STATUS[state]:
        charge["status"] = _CHARGE_STATUS[state]
        await repo.update("ChargeItem", charge_item_id, charge)
    invoice = await _load(repo, "Invoice", invoice_id)
    if state in ("paid", "fulfilled"):
        invoice["status"] = "balanced"
    elif state in ("refunded", "expired"):
        invoice["status"] = "cancelled"
        invoice["cancelledReason"] = state
    meta = dict(invoice.get("meta") or {})
    others = [t for t in meta.get("tag", []) if t.get("system") != STATE_TAG_SYSTEM]
    meta["tag"] = [*others, {"system": STATE_TAG_SYSTEM, "code": state}]
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    invoice["meta"] = meta
    await repo.update("Invoice", invoice_id, invoice)
