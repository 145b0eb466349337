"""Notifications: the one entry point :func:`notify`, and the staff reads and follow-up.

``notify`` checks its input, resolves the recipient, renders the template in their
language, plans the channels, records the notification and its FHIR Communication and
queues the first delivery step, all in the caller's transaction; it never sends.
Delivery runs after commit as a durable job (``smartmed.notify.flows``).

Channel plan: ``inapp``, when asked for, always writes the inbox (and pushes to open
pages) in addition to the others; the other channels are tried in the given order until
one delivers (retries with back-off, then the next). Channels the deployment lacks, the
recipient has no address for, or (routine only) the recipient switched off are left out
with the reason; with nothing left the notification is recorded as undeliverable.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Conflict, Invalid, NotFound
from smartmed.fhir.hooks import current_access
from smartmed.fhir.model import fhir_instant, utcnow
from smartmed.notify.channels import CHANNELS, Channel, build_channels
from smartmed.notify.communication import new_communication, not_done, update_communication
from smartmed.notify.errors import UnknownChannel, UnusableData
from smartmed.notify.preferences import Preferences, get_preferences, quiet_until
from smartmed.notify.recipients import Contact, resolve
from smartmed.notify.tables import KEY_LEN, notification, notify_attempt
from smartmed.notify.tasks import schedule_step
from smartmed.notify.templates import check_template, render

log = structlog.get_logger("smartmed.notify")

URGENCIES = ("routine", "urgent")
DEFAULT_CHANNELS = ("inapp", "wechat", "sms", "email")


def check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """The channels in order without repeats; UnknownChannel for a name we lack."""
    if isinstance(channels, str) or not channels:
        raise UnknownChannel(
            f"channels must be a non-empty list of {', '.join(CHANNELS)}", expression="channels"
        )
    seen: list[str] = []
    for name in channels:
        if name not in CHANNELS:
            raise UnknownChannel(
                f"unknown channel {name!r} (channels: {', '.join(CHANNELS)})",
                expression="channels",
            )
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def plan_channels(
    channels: tuple[str, ...],
    *,
    contact: Contact,
    prefs: Preferences,
    urgency: str,
    template: str,
    providers: dict[str, Channel],
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(the external channels to try in order with their addresses, skipped -> why)."""
    plan: list[tuple[str, str]] = []
    last_resort: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}
    for name in channels:
        if name == "inapp":
            continue
        why = providers[name].unavailable(template)
        address = contact.address(name)
        if why is None and address is None:
            why = f"{contact.owner} has no {name} address"
        if why is not None:
            skipped[name] = why
        elif name in prefs.disabled and urgency != "urgent":
            skipped[name] = "switched off by the recipient"
        elif name in prefs.disabled:
            last_resort.append((name, address or ""))  # urgent: still, but last
        else:
            plan.append((name, address or ""))
    return plan + last_resort, skipped


async def notify(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    recipient: str,
    template: str,
    data: dict[str, Any],
    channels: Sequence[str] = DEFAULT_CHANNELS,
    urgency: str = "routine",
    key: str | None = None,
) -> str:
    """Record and queue a notification in the caller's transaction; its id.

    The same ``key`` returns the first notification's id and queues nothing more.
    The recipient is read and the Communication written as the platform, not under the
    request caller's access policy: the caller learns only the id, and a resident's SOS
    must reach a doctor whose record the resident may not read.
    """
    reset = current_access.set(None)
    try:
        return await _notify(
            engine,
            conn,
            recipient=recipient,
            template=template,
            data=data,
            channels=channels,
            urgency=urgency,
            key=key,
        )
    finally:
        current_access.reset(reset)


async def _notify(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    recipient: str,
    template: str,
    data: dict[str, Any],
    channels: Sequence[str],
    urgency: str,
    key: str | None,
) -> str:
    if urgency not in URGENCIES:
        raise Invalid(f"urgency must be routine or urgent, not {urgency!r}", expression="urgency")
    wanted = check_channels(channels)
    check_template(template)
    if not isinstance(data, dict):
        raise UnusableData("data must be a JSON object", expression="data")
    try:
        data_json = orjson.dumps(data).decode()
    except TypeError as exc:
        raise UnusableData(f"data is not JSON: {exc}", expression="data") from None
    if key is not None and not 0 < len(key) <= KEY_LEN:
        raise Invalid(f"key must be 1-{KEY_LEN} characters", expression="key")
    if key is not None:
        existing = await _by_key(conn, key)
        if existing is not None:
            return existing

    settings = engine.settings
    repo = engine.repository(conn)
    contact = await resolve(repo, recipient)
    rendered = render(template, contact.locale, data, timezone=settings.notify_timezone)
    prefs = await get_preferences(conn, contact.owner)
    providers = build_channels(engine)
    plan, skipped = plan_channels(
        wanted,
        contact=contact,
        prefs=prefs,
        urgency=urgency,
        template=template,
        providers=providers,
    )
    inapp = "inapp" in wanted
    deliverable = inapp or bool(plan)
    now = utcnow()
    not_before = now
    if deliverable and urgency == "routine":
        not_before = quiet_until(prefs, now, settings.notify_timezone) or now
    notification_id = str(uuid.uuid4())
    communication_id = str(uuid.uuid4())
    reason = None
    if not deliverable:
        reason = "no reachable channel: " + "; ".join(f"{c}: {w}" for c, w in skipped.items())
    row = {
        "id": notification_id,
        "key": key,
        "recipient": recipient,
        "owner": contact.owner,
        "template": template,
        "locale": rendered.locale,
        "urgency": urgency,
        "data": data_json,
        "rendered": orjson.dumps(rendered.as_json()).decode(),
        "inapp": int(inapp),
        "plan": orjson.dumps(plan).decode(),
        "skipped": orjson.dumps(skipped).decode(),
        "status": "queued" if deliverable else "undeliverable",
        "step": 0,
        "attempts": 0,
        "delivered_by": None,
        "reason": reason,
        "communication_id": communication_id,
        "created_at": now,
        "not_before": not_before,
        "finished_at": None if deliverable else now,
    }
    if key is None:
        await conn.execute(notification.insert().values(**row))
    else:
        try:
            # A concurrent call with the same key may win the unique index; ours is then
            # rolled back to here and theirs is the answer.
            async with conn.begin_nested():
                await conn.execute(notification.insert().values(**row))
        except IntegrityError:
            existing = await _by_key(conn, key)
            if existing is None:
                raise
            return existing
    body = new_communication(
        notification_id=notification_id, recipient=recipient, urgency=urgency, body=rendered.body
    )
    if reason is not None:
        body = not_done(body, reason)
    await repo.create(body, id_=communication_id)
    if deliverable:
        await schedule_step(conn, notification_id, step=0, attempt=1, run_at=not_before)
    else:
        log.warning("notification undeliverable", notification=notification_id, reason=reason)
    return notification_id


async def _by_key(conn: AsyncConnection, key: str) -> str | None:
    found = await conn.scalar(select(notification.c.id).where(notification.c.key == key))
    return str(found) if found is not None else None


# -- staff reads and follow-up ---------------------------------------------------------


async def get_notification(conn: AsyncConnection, notification_id: str) -> dict[str, Any] | None:
    """One notification's delivery state and attempts (staff view)."""
    row = (
        await conn.execute(select(notification).where(notification.c.id == notification_id))
    ).first()
    if row is None:
        return None
    a = notify_attempt.c
    attempts = (
        await conn.execute(
            select(notify_attempt).where(a.notification_id == notification_id).order_by(a.pk)
        )
    ).all()
    return _public(row, attempts)


def _instant(value: Any) -> str | None:
    return fhir_instant(value) if value is not None else None


def _public(row: Any, attempts: Sequence[Any] = ()) -> dict[str, Any]:
    return {
        "id": row.id,
        "recipient": row.recipient,
        "template": row.template,
        "urgency": row.urgency,
        "locale": row.locale,
        "status": row.status,
        "reason": row.reason,
        "skipped": orjson.loads(row.skipped),
        "plan": [c for c, _ in orjson.loads(row.plan)],
        "deliveredBy": orjson.loads(row.delivered_by) if row.delivered_by else [],
        "communication": f"Communication/{row.communication_id}",
        "created": _instant(row.created_at),
        "notBefore": _instant(row.not_before),
        "finished": _instant(row.finished_at),
        "attempts": [
            {
                "channel": x.channel,
                "attempt": x.attempt,
                "at": _instant(x.at),
                "outcome": x.outcome,
                "detail": x.detail,
            }
            for x in attempts
        ],
    }


async def list_undeliverable(
    conn: AsyncConnection, *, limit: int = 50, followed_up: bool = False
) -> list[dict[str, Any]]:
    """Undeliverable notifications (and, asked for, those followed up), newest first."""
    n = notification.c
    states = ["undeliverable", "followed-up"] if followed_up else ["undeliverable"]
    stmt = (
        select(notification)
        .where(n.status.in_(states))
        .order_by(n.created_at.desc(), n.id.desc())
        .limit(limit)
    )
    rows = (await conn.execute(stmt)).all()
    if not rows:
        return []
    a = notify_attempt.c
    ids = [r.id for r in rows]
    attempts = (
        await conn.execute(select(notify_attempt).where(a.notification_id.in_(ids)).order_by(a.pk))
    ).all()
    by_id: dict[str, list[Any]] = {}
    for x in attempts:
        by_id.setdefault(x.notification_id, []).append(x)
    return [_public(r, by_id.get(r.id, [])) for r in rows]


def _with_note(resource: dict[str, Any], author: str, text: str, at: str) -> dict[str, Any]:
    out = dict(resource)
    note: dict[str, Any] = {"time": at, "text": text}
    if "/" in author:
        note["authorReference"] = {"reference": author}
    else:
        note["authorString"] = author
    out["note"] = [*out.get("note", []), note]
    return out


async def do_follow_up(
    engine: FhirEngine, conn: AsyncConnection, notification_id: str, *, author: str, note: str
) -> dict[str, Any]:
    """Record that staff followed an undeliverable notification up (e.g. by phone).

    The notification becomes ``followed-up`` and leaves the undeliverable list; the note,
    its author and time go on the Communication, which stays ``not-done``.
    """
    row = (
        await conn.execute(select(notification).where(notification.c.id == notification_id))
    ).first()
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    result = await conn.execute(
        update(notification)
        .where(notification.c.id == notification_id, notification.c.status == "undeliverable")
        .values(status="followed-up")
    )
    if result.rowcount != 1:
        raise Conflict(
            f"notification {notification_id} is {row.status}, not undeliverable",
            expression="status",
        )
    reset = current_access.set(None)  # the route checked the staff role
    try:
        repo = engine.repository(conn)
        at = fhir_instant(utcnow())
        await update_communication(repo, row.communication_id, _with_note, author, note, at)
    finally:
        current_access.reset(reset)
    found = await get_notification(conn, notification_id)
    assert found is not None
    return found
