"""HTTP endpoints of notifications (JSON; errors as OperationOutcome).

======  ===========================================  ==========================================
method  path                                         purpose
======  ===========================================  ==========================================
GET     /api/notifications                           my inbox (``unread``, ``before``, ``limit``)
GET     /api/notifications/stream                    my new messages, live (Server-Sent Events)
POST    /api/notifications/{id}/read                 mark one message read
POST    /api/notifications/read-all                  mark all my messages read
GET     /api/notifications/preferences               my channels and quiet hours
PUT     /api/notifications/preferences               replace them
GET     /api/notifications/undeliverable             staff: notifications nobody could receive
GET     /api/notifications/{id}/delivery             staff: one notification's plan and attempts
POST    /api/notifications/{id}/follow-up            staff: note what was done; leaves the list
======  ===========================================  ==========================================

The caller is the portal session's principal (``request.state.principal``) or a bearer
access token; "my" is the principal's FHIR identity (``fhirUser``: Patient/9,
Practitioner/1, RelatedPerson/4).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Forbidden, NotFound, Unauthorized
from smartmed.identity.principal import Principal, Role
from smartmed.identity.service import get_identity
from smartmed.notify import inbox, service
from smartmed.notify.broker import broker
from smartmed.notify.channels import CHANNELS
from smartmed.notify.preferences import check_preferences, do_set_preferences, get_preferences

PREFIX = "/api/notifications"
# Who may see the undeliverable list: the people who can follow a message up by phone
# or in person, and the administrators of the institution and platform.
STAFF_ROLES = frozenset(
    {
        Role.FAMILY_DOCTOR,
        Role.NURSE,
        Role.SPECIALIST,
        Role.PUBLIC_HEALTH_WORKER,
        Role.PHARMACIST,
        Role.INSTITUTION_ADMIN,
        Role.PLATFORM_ADMIN,
    }
)
KEEPALIVE_SECONDS = 15.0
_NO_STORE = {"Cache-Control": "no-store"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def caller(request: Request) -> Principal:
    """The authenticated caller: bearer token, else portal session principal; else 401.

    A portal session rides on a cookie, so its unsafe requests (POST, PUT) must carry
    the session's CSRF token, exactly as the portal's own forms do.
    """
    header = request.headers.get("authorization")
    if header is None:
        principal = getattr(request.state, "principal", None)
        if not isinstance(principal, Principal):
            raise Unauthorized("sign in to the portal or send a bearer access token", error=None)
        if request.method not in _SAFE_METHODS:
            from smartmed.portal import csrf_protect  # the portal owns sessions and CSRF

            await csrf_protect(request)
        return principal
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <token>'", error="invalid_request"
        )
    principal = await get_identity(request.app).principal(request, token.strip())
    request.state.principal = principal
    return principal


def person(principal: Principal) -> str:
    """The caller's FHIR identity; Forbidden for an account not linked to a person."""
    if not principal.fhir_user:
        raise Forbidden("this account is not linked to a person (no fhirUser), so has no inbox")
    return principal.fhir_user


Caller = Annotated[Principal, Depends(caller)]


def _staff(principal: Principal, what: str) -> None:
    if not any(r.role in STAFF_ROLES for r in principal.roles):
        raise Forbidden(f"only staff {what}")


def _engine(request: Request) -> FhirEngine:
    engine: FhirEngine = request.app.state.fhir
    return engine


class QuietHoursIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str = Field(description="local time HH:MM, e.g. 22:00")
    end: str = Field(description="local time HH:MM, e.g. 07:00; may be before start")


class FollowUpIn(BaseModel):
    """What staff did about an undeliverable notification."""

    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=1, max_length=2000, description="e.g. 'phoned; will come'")


class PreferencesIn(BaseModel):
    """The whole of one's preferences (PUT replaces them)."""

    model_config = ConfigDict(extra="forbid")
    channels: dict[str, bool] = Field(default_factory=dict, description="false: switched off")
    quietHours: QuietHoursIn | None = None  # noqa: N815 - JSON field name
    timezone: str | None = Field(default=None, description="IANA zone, e.g. Asia/Shanghai")


def build_notify_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["notifications"])

    @router.get("")
    async def my_inbox(
        request: Request,
        principal: Caller,
        unread: bool = False,
        before: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> JSONResponse:
        owner = person(principal)
        async with _engine(request).db.read() as conn:
            body = await inbox.list_inbox(
                conn, owner, unread_only=unread, before=before, limit=limit
            )
        return JSONResponse(body, headers=_NO_STORE)

    @router.get("/stream")
    async def stream(
        request: Request,
        principal: Caller,
        after: Annotated[int | None, Query(ge=0)] = None,
    ) -> StreamingResponse:
        owner = person(principal)
        engine = _engine(request)
        last = request.headers.get("last-event-id")
        if after is None and last is not None and last.strip().isdigit():
            after = int(last.strip())
        if after is None:
            async with engine.db.read() as conn:
                after = await inbox.last_seq(conn, owner)
        return StreamingResponse(
            _events(engine, owner, after),
            media_type="text/event-stream",
            headers={**_NO_STORE, "X-Accel-Buffering": "no"},
        )

    @router.post("/read-all")
    async def read_all(request: Request, principal: Caller) -> JSONResponse:
        owner = person(principal)
        async with _engine(request).db.write() as conn:
            changed = await inbox.do_mark_read(conn, owner, None)
        return JSONResponse({"updated": changed})

    @router.get("/preferences")
    async def preferences(request: Request, principal: Caller) -> JSONResponse:
        owner = person(principal)
        engine = _engine(request)
        async with engine.db.read() as conn:
            prefs = await get_preferences(conn, owner)
        return JSONResponse(prefs.as_json(engine.settings.notify_timezone), headers=_NO_STORE)

    @router.put("/preferences")
    async def set_preferences(
        request: Request, principal: Caller, body: PreferencesIn
    ) -> JSONResponse:
        owner = person(principal)
        engine = _engine(request)
        prefs = check_preferences(
            disabled={name for name, on in body.channels.items() if not on}
            | {name for name in body.channels if name not in CHANNELS},
            quiet_start=body.quietHours.start if body.quietHours else None,
            quiet_end=body.quietHours.end if body.quietHours else None,
            timezone=body.timezone,
        )
        async with engine.db.write() as conn:
            await do_set_preferences(conn, owner, prefs)
        return JSONResponse(prefs.as_json(engine.settings.notify_timezone))

    @router.get("/undeliverable")
    async def undeliverable(
        request: Request,
        principal: Caller,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        followed_up: Annotated[bool, Query(alias="followedUp")] = False,
    ) -> JSONResponse:
        _staff(principal, "may list undeliverable notifications")
        async with _engine(request).db.read() as conn:
            items = await service.list_undeliverable(conn, limit=limit, followed_up=followed_up)
        return JSONResponse({"items": items}, headers=_NO_STORE)

    @router.post("/{notification_id}/follow-up")
    async def follow_up(
        request: Request, principal: Caller, notification_id: str, body: FollowUpIn
    ) -> JSONResponse:
        _staff(principal, "may follow undeliverable notifications up")
        engine = _engine(request)
        async with engine.db.write() as conn:
            found = await service.do_follow_up(
                engine,
                conn,
                notification_id,
                author=principal.fhir_user or principal.subject,
                note=body.note,
            )
        return JSONResponse(found)

    @router.get("/{notification_id}/delivery")
    async def delivery(request: Request, principal: Caller, notification_id: str) -> JSONResponse:
        _staff(principal, "may see a notification's delivery")
        async with _engine(request).db.read() as conn:
            found = await service.get_notification(conn, notification_id)
        if found is None:
            raise NotFound(f"no notification {notification_id}")
        return JSONResponse(found, headers=_NO_STORE)

    @router.post("/{notification_id}/read")
    async def mark_read(request: Request, principal: Caller, notification_id: str) -> Response:
        owner = person(principal)
        async with _engine(request).db.write() as conn:
            if not await inbox.is_in_inbox(conn, owner, notification_id):
                raise NotFound(f"no message {notification_id} in your inbox")
            await inbox.do_mark_read(conn, owner, notification_id)
        return Response(status_code=204)

    return router


def _event(row: Any) -> bytes:
    data = orjson.dumps(inbox.inbox_item(row)).decode()
    return f"id: {row.pk}\nevent: notification\ndata: {data}\n\n".encode()


async def _events(
    engine: FhirEngine, owner: str, after: int, *, lifetime: float | None = None
) -> AsyncIterator[bytes]:
    """The SSE body: messages after ``after`` as they arrive, keep-alives in between.

    A stream ends after ``lifetime`` seconds (default: an access token's lifetime); the
    browser's EventSource reconnects with ``Last-Event-ID``, so nothing is missed, and
    the caller's token or session is checked again: a revoked one stops receiving.
    """
    poll = engine.settings.notify_stream_poll_seconds
    loop = asyncio.get_running_loop()
    ends = loop.time() + (lifetime or float(engine.settings.access_token_seconds))
    await broker.listen(engine.db)
    try:
        with broker.subscribe(owner) as wake:
            yield b"retry: 3000\n: connected\n\n"
            quiet = 0.0
            while loop.time() < ends:
                wake.clear()  # before reading: a wake-up during the read is not lost
                async with engine.db.read() as conn:
                    rows = await inbox.inbox_after(conn, owner, after)
                for row in rows:
                    yield _event(row)
                    after = row.pk
                if rows:
                    quiet = 0.0
                    continue
                wait = max(0.0, min(poll, ends - loop.time()))
                try:
                    await asyncio.wait_for(wake.wait(), wait)
                except TimeoutError:
                    quiet += wait
                if quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield b": keepalive\n\n"
    finally:
        await broker.unlisten(engine.db)
