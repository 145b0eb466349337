"""Break-the-glass: emergency access to one patient's record, and its review.

``POST /api/access/break-glass`` — a clinician whose role allows it (policy: ``break-glass``
among the role's patient relations) opens one patient's record for a few hours
(``break_glass_hours``) by giving a reason and passing the second factor again. The grant
is an ``access_grant`` row of kind ``break-glass``; an AuditEvent (purposeOfUse ETREAT)
is written; the patient and the reviewers are notified when notifications are available;
the access is listed for review.

``GET /api/access/break-glass`` and ``POST /api/access/break-glass/{id}/review`` — the
review list for security and audit administrators.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import insert, select, update

from smartmed.access.guard import AccessControl
from smartmed.access.tables import access_grant
from smartmed.fhir.errors import Forbidden, Invalid, NotFound, Unauthorized
from smartmed.fhir.hooks import AuditRecord
from smartmed.fhir.model import fhir_instant, utcnow
from smartmed.fhir.storage.tables import resource
from smartmed.identity.principal import Principal, Role
from smartmed.identity.service import get_identity

log = structlog.get_logger("smartmed.access")

REVIEWERS = (Role.SECURITY_ADMIN, Role.AUDIT_ADMIN)


class BreakGlassRequest(BaseModel):
    patient: str = Field(min_length=1, max_length=200, description="Patient/<id> or <id>")
    reason: str = Field(min_length=10, max_length=2000, description="Why, in a sentence")
    totp: str = Field(min_length=6, max_length=8, pattern=r"^\d+$")


class ReviewRequest(BaseModel):
    note: str = Field(default="", max_length=2000)


async def caller(request: Request) -> Principal:
    """The person calling a platform API: a bearer token, or the portal session."""
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal):
        return principal
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("sign in or send a bearer access token", error=None)
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", error=None)
    return await get_identity(request.app).principal(request, token.strip())


def build_access_router() -> APIRouter:
    router = APIRouter(prefix="/api/access", tags=["access"])

    @router.post("/break-glass", status_code=201)
    async def break_glass(request: Request, body: BreakGlassRequest) -> dict[str, Any]:
        principal = await caller(request)
        engine = request.app.state.fhir
        control: AccessControl = engine.access
        roles = [r for r in principal.roles if str(r.role) in control.policy.roles]
        if not any("break-glass" in control.policy.roles[str(r.role)].patients for r in roles):
            raise Forbidden("your roles may not break the glass")
        if not principal.fhir_user:
            raise Forbidden("break-the-glass needs an account linked to a practitioner")
        patient_id = body.patient.removeprefix("Patient/")
        async with engine.db.read() as conn:
            exists = (
                await conn.execute(
                    select(resource.c.pk).where(
                        resource.c.type == "Patient",
                        resource.c.id == patient_id,
                        resource.c.deleted.is_(False),
                    )
                )
            ).first()
        if exists is None:
            raise NotFound(f"Patient/{patient_id} is not known", expression="patient")
        identity = get_identity(request.app)
        if not await identity.accounts.verify_totp(principal.subject, body.totp):
            await _audit(engine, request, principal, patient_id, body.reason, outcome="4")
            raise Forbidden("the second-factor code is not valid")
        now = utcnow()
        until = now + timedelta(hours=control.policy.break_glass_hours)
        grant_id = str(uuid.uuid4())
        async with engine.db.write() as conn:
            await conn.execute(
                insert(access_grant).values(
                    source=f"break-glass/{grant_id}",
                    kind="break-glass",
                    grantee=principal.fhir_user,
                    patient_id=patient_id,
                    valid_from=now,
                    valid_to=until,
                    reason=body.reason,
                    created_at=now,
                )
            )
        await _audit(engine, request, principal, patient_id, body.reason, outcome="0")
        await _tell(engine, principal, patient_id, body.reason, until)
        log.warning(
            "break-the-glass access opened", grant=grant_id, roles=[str(r.role) for r in roles]
        )
        return {
            "id": grant_id,
            "patient": f"Patient/{patient_id}",
            "validUntil": fhir_instant(until),
            "reviewed": False,
        }

    @router.get("/break-glass")
    async def review_list(request: Request, reviewed: bool | None = None) -> dict[str, Any]:
        principal = await caller(request)
        _reviewer(principal)
        engine = request.app.state.fhir
        g = access_grant.c
        stmt = select(access_grant).where(g.kind == "break-glass").order_by(g.created_at.desc())
        if reviewed is not None:
            stmt = stmt.where(g.reviewed_at.is_not(None) if reviewed else g.reviewed_at.is_(None))
        async with engine.db.read() as conn:
            rows = (await conn.execute(stmt.limit(500))).all()
        return {
            "items": [
                {
                    "id": row.source.removeprefix("break-glass/"),
                    "clinician": row.grantee,
                    "patient": f"Patient/{row.patient_id}",
                    "reason": row.reason,
                    "opened": fhir_instant(row.created_at),
                    "validUntil": fhir_instant(row.valid_to),
                    "reviewed": row.reviewed_at is not None,
                    "reviewedBy": row.reviewed_by,
                }
                for row in rows
            ]
        }

    @router.post("/break-glass/{grant_id}/review")
    async def review(request: Request, grant_id: str, body: ReviewRequest) -> dict[str, Any]:
        principal = await caller(request)
        _reviewer(principal)
        engine = request.app.state.fhir
        g = access_grant.c
        async with engine.db.write() as conn:
            done = await conn.execute(
                update(access_grant)
                .where(g.source == f"break-glass/{grant_id}", g.kind == "break-glass")
                .values(reviewed_at=utcnow(), reviewed_by=principal.fhir_user or principal.subject)
            )
        if done.rowcount != 1:
            raise NotFound(f"no break-the-glass access {grant_id}")
        return {"id": grant_id, "reviewed": True, "note": body.note}

    return router


def _reviewer(principal: Principal) -> None:
    if not any(principal.has_role(role) for role in REVIEWERS):
        raise Forbidden("only security and audit administrators review break-the-glass access")


async def _audit(
    engine: Any,
    request: Request,
    principal: Principal,
    patient_id: str,
    reason: str,
    *,
    outcome: str,
) -> None:
    if engine.audit is None:
        return
    await engine.audit.record(
        AuditRecord(
            action="E",
            subtype="break-glass",
            outcome=outcome,
            recorded=utcnow(),
            agent=principal.fhir_user,
            account=principal.subject,
            client_id=principal.client_id,
            roles=tuple(sorted(str(r.role) for r in principal.roles)),
            source_ip=request.client.host if request.client else None,
            purpose_of_use="ETREAT",
            entities=(f"Patient/{patient_id}",),
            patients=(f"Patient/{patient_id}",),
            detail=reason,
        )
    )


async def _tell(
    engine: Any, principal: Principal, patient_id: str, reason: str, until: Any
) -> None:
    """Notify the patient (urgent: quiet hours never delay it) when notifications exist."""
    try:
        from smartmed.notify import notify
    except ImportError:  # pragma: no cover - the notify module is part of the platform
        return
    data = {
        "clinician": principal.fhir_user,
        "reason": reason,
        "until": fhir_instant(until),
    }
    try:
        async with engine.db.write() as conn:
            await notify(
                engine,
                conn,
                recipient=f"Patient/{patient_id}",
                template="break-glass",
                data=data,
                channels=("inapp", "sms"),
                urgency="urgent",
            )
    except Invalid as exc:
        # Never silent: the access is still listed for review and in the audit trail.
        log.error("break-the-glass notification not queued", error=str(exc))
