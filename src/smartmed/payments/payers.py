"""Who may pay for whom.

An order has a **payer** (the order's ``subject``: who pays, sees the order, is told of
refunds and anomalies) and a **beneficiary** (the resident the purchase is for: the
``subject`` of its ChargeItem and Invoice, which R4 restricts to Patient or Group). The
payer is

- the resident themselves (a ``Patient``: payer = beneficiary), or
- a family representative (a ``RelatedPerson``, or a ``Patient`` paying for a family
  member) holding a **valid family delegation with the ``sign-on-behalf`` action** from
  the beneficiary (docs/access.md, "Family delegation"): the one who may sign for the
  member may also buy for them.

The delegation is read where the access policy reads it: the ``access_grant`` rows the
policy's ``delegation`` grant rule derives from the active family-delegation
``Consent``s, in the same transaction as every write of one. So an expired delegation
(``provision.period`` over) or a revoked one (``status`` no longer active, or deleted)
stops a representative from paying at once, exactly as it stops them reading.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.access.tables import access_grant
from smartmed.fhir.errors import Forbidden
from smartmed.fhir.model import utcnow

PAYER_TYPES = ("Patient", "RelatedPerson")
SIGN_ON_BEHALF = "sign-on-behalf"


async def holds_delegation(
    conn: AsyncConnection, *, payer: str, patient: str, at: datetime | None = None
) -> bool:
    """Whether ``payer`` holds a ``sign-on-behalf`` delegation from ``patient`` now."""
    if not patient.startswith("Patient/"):
        return False
    moment = (at or utcnow()).replace(tzinfo=None)
    g = access_grant.c
    padded = literal(" ") + g.actions + literal(" ")
    stmt = (
        select(g.pk)
        .where(
            g.kind == "delegation",
            g.grantee == payer,
            g.patient_id == patient.split("/", 1)[1],
            g.resource_type.is_(None),
            padded.like(f"% {SIGN_ON_BEHALF} %"),
            or_(g.valid_from.is_(None), g.valid_from <= moment),
            or_(g.valid_to.is_(None), g.valid_to > moment),
        )
        .limit(1)
    )
    return (await conn.execute(stmt)).first() is not None


async def check_payer(
    conn: AsyncConnection, *, payer: str, beneficiary: str, at: datetime | None = None
) -> None:
    """Forbidden unless ``payer`` may pay for ``beneficiary`` (see the module docstring)."""
    if payer.split("/", 1)[0] not in PAYER_TYPES:
        raise Forbidden("only a resident or a family representative can order and pay")
    if payer == beneficiary:
        return
    if not await holds_delegation(conn, payer=payer, patient=beneficiary, at=at):
        raise Forbidden(
            f"{payer} holds no family delegation (sign-on-behalf) from {beneficiary}",
            expression="beneficiary",
        )
