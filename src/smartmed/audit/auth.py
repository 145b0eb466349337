"""Audit records of the login page: login, failed login (password or TOTP), logout.

Nothing personal goes into them beyond the account id: no user name, no password, no
code; a failed login for a name that is no account records no account at all.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from starlette.requests import Request

from smartmed.fhir.hooks import AuditRecord, AuditSink
from smartmed.identity.tables import account as account_table

LOGIN = "login"
LOGIN_FAILED = "login-failed"
LOGOUT = "logout"


def _sink(request: Request) -> AuditSink | None:
    engine = getattr(request.app.state, "fhir", None)
    return getattr(engine, "audit", None)


async def account_id(request: Request, username: str) -> str | None:
    """The id of the account named ``username`` (None when there is none or no audit)."""
    engine = getattr(request.app.state, "fhir", None)
    if engine is None or engine.audit is None or not username:
        return None
    async with engine.db.read() as conn:
        found = await conn.scalar(
            sa.select(account_table.c.id).where(account_table.c.username == username)
        )
    return None if found is None else str(found)


async def record(
    request: Request,
    subtype: str,
    *,
    account: str | None,
    outcome: str = "0",
    detail: str | None = None,
) -> None:
    """Record one authentication event (returns once it is stored; no-op without a sink)."""
    sink = _sink(request)
    if sink is None:
        return
    await sink.record(
        AuditRecord(
            action="E",
            subtype=subtype,
            outcome=outcome,
            recorded=datetime.now(UTC),
            account=account,
            source_ip=request.client.host if request.client else None,
            detail=detail,
        )
    )
